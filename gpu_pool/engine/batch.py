"""A forward pass as the engine loop sees it: the batch that goes in, the outputs that
come back, and the port the model implements (gpu_pool/model/m3.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gpu_pool.engine.batching import Item
from gpu_pool.wire.packing import Packing
from gpu_pool.wire.protocol import Kind, Lane


@dataclass(frozen=True)
class Batch:
    items: list[Item]
    ids: np.ndarray  # the items' ids, packed one after another
    lengths: np.ndarray  # int64, one per item
    kinds: Kind  # what some item of the batch wants
    colbert_texts: np.ndarray  # the items that want ColBERT vectors
    lane: Lane = Lane.BULK


@dataclass(frozen=True)
class Outputs:
    """Float32 numpy arrays for a packed batch (dense and ColBERT in float16 when it asked
    for ``Kind.HALF``); absent kinds are None."""

    dense: np.ndarray | None  # [texts, dim]
    sparse: np.ndarray | None  # [tokens]: the weight of every token of every text
    colbert: np.ndarray | None  # [rows, dim]: the ColBERT rows of the wanting texts, in their order


class Pending(Protocol):
    """A pass's outputs on their way to the host."""

    def wait(self) -> Outputs:
        """The outputs, once on the host."""
        ...

    def seconds(self) -> float:
        """The pass's own time on its device (read after ``wait``)."""
        ...


class RunningPass(Protocol):
    steps: int  # the points between which another pass may run
    stages: int  # steps per layer, each a different part of it
    step_tokens: int  # the most rows one step takes

    def step(self) -> bool:
        """Run the next step (a part of a layer); True once the last one has run."""
        ...

    def sync(self) -> None:
        """Wait until the device has run the steps queued so far (at once on a CPU)."""
        ...

    def outputs_async(self) -> Pending:
        """Once the last step has run: the heads, queued, and their outputs on their way."""
        ...


class Model(Protocol):
    dim: int  # the vector size
    device_name: str
    dtype_name: str

    def start(self, ids: np.ndarray, lengths: np.ndarray, kinds: Kind, colbert_texts: np.ndarray,
              step_tokens: int | None = None) -> RunningPass:
        """A pass over the packed ``ids``, run a part of a layer per ``step`` so that it can stop
        between, each step over at most ``step_tokens`` rows (None: all)."""
        ...

    def release_memory(self) -> None:
        """Give the device's cached memory back (after running out of it)."""
        ...


def pack(items: list[Item], ids: Sequence[np.ndarray], kinds: Sequence[Kind], lane: Lane = Lane.BULK) -> Batch:
    """``ids[i]`` and ``kinds[i]``: item i's token ids and what its job wants."""
    wanted = Kind(0)
    for kind in kinds:
        wanted |= kind
    if not all(kind & Kind.HALF for kind in kinds):
        wanted &= ~Kind.HALF  # float32 outputs, which the float16 segments take by conversion
    colbert = [i for i, kind in enumerate(kinds) if kind & Kind.COLBERT]
    lengths = np.array([item.length for item in items], dtype=np.int64)
    return Batch(items, np.concatenate(ids), lengths, wanted, np.array(colbert, dtype=np.int64), lane)


Row = tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]


def per_item(batch: Batch, out: Outputs) -> Iterator[Row]:
    """Each item's dense vector, token weights and ColBERT rows, cut from the packed outputs."""
    tokens = Packing(batch.lengths.tolist())
    colbert_rows = Packing(batch.lengths[batch.colbert_texts].tolist())
    colbert_of = {row: k for k, row in enumerate(batch.colbert_texts.tolist())}
    for row in range(len(batch.items)):
        k = colbert_of.get(row)
        yield (
            None if out.dense is None else out.dense[row],
            None if out.sparse is None else out.sparse[tokens.tokens(row)],
            None if out.colbert is None or k is None else out.colbert[colbert_rows.colbert(k)],
        )
