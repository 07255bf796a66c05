"""The port the engine drives and the model implements: a pass started, run a step at a
time, its outputs on their way to the host. Torch-free, so the engine imports it without
loading torch; ``gpu_pool/model/m3.py`` implements it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gpu_pool.wire.protocol import Kind


@dataclass(frozen=True)
class Outputs:
    """Float32 numpy arrays for a packed batch (dense and ColBERT in float16 when it asked
    for ``Kind.HALF``); absent kinds are None."""

    dense: np.ndarray | None  # [texts, dim]
    sparse: np.ndarray | None  # [tokens]: the weight of every token of every text
    colbert: np.ndarray | None  # [rows, dim]: the ColBERT rows of the wanting texts, in their order
    logits: np.ndarray | None = None  # [pairs]: the cross-encoder's raw score of each pair (a rerank pass)


class Pending(Protocol):
    """A pass's outputs on their way to the host."""

    def wait(self) -> Outputs:
        """The outputs, once on the host."""
        ...

    def seconds(self) -> float:
        """The pass's own time on its device (read after ``wait``)."""
        ...


class RunningPass(Protocol):
    steps: int  # the pass's steps, between any two of which another pass may run
    steps_per_layer: int  # each a different part of the layer
    step_tokens: int  # the most rows one step takes

    def step(self) -> bool:
        """Run the next step (a part of a layer); True once the last one has run."""
        ...

    def finish(self) -> None:
        """Run every step left, in a row (nothing will run between them)."""
        ...

    def keep_ahead(self, steps: int) -> None:
        """After a step: wait until the device is at most ``steps`` steps behind the host (at once on a CPU)."""
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
    reranks: bool  # whether a cross-encoder is loaded: passes of ``Kind.RERANK`` run it

    def start(self, ids: np.ndarray, lengths: np.ndarray, kinds: Kind, colbert_texts: np.ndarray,
              step_tokens: int | None = None, one_thread: bool = False) -> RunningPass:
        """A pass over the packed ``ids``, run a part of a layer per ``step`` so that it can stop
        between, each step over at most ``step_tokens`` rows (None: all); with ``Kind.RERANK`` in
        ``kinds``, of the cross-encoder, each text a (query, passage) pair. ``one_thread``: on a
        CPU, on one thread whatever its size (its cores are wanted by other work)."""
        ...

    def release_memory(self) -> None:
        """Give the device's cached memory back (after running out of it)."""
        ...
