"""Packing the chosen inputs (``choosing``) into one row for a pass, and cutting each input's
outputs back out of the pass's."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from gpu_pool.engine.choosing import Item
from gpu_pool.model.port import Outputs
from gpu_pool.wire.packing import Packing
from gpu_pool.wire.protocol import Kind, Lane, has_kind


@dataclass(frozen=True)
class Batch:
    items: list[Item]
    ids: np.ndarray  # the items' ids, packed one after another
    lengths: np.ndarray  # int64, one per item
    kinds: Kind  # what some item of the batch wants (``Kind.RERANK``: the cross-encoder's pass)
    colbert_texts: np.ndarray  # the items that want ColBERT vectors
    lane: Lane = Lane.BULK


def pack(items: list[Item], ids: Sequence[np.ndarray], kinds: Sequence[Kind], lane: Lane = Lane.BULK) -> Batch:
    """``ids[i]`` and ``kinds[i]``: item i's token ids and what its job wants."""
    wanted = Kind(0)
    for kind in kinds:
        wanted |= kind
    if not all(has_kind(kind, Kind.HALF) for kind in kinds):
        wanted &= ~Kind.HALF  # float32 outputs, which the float16 segments take by conversion
    colbert = [i for i, kind in enumerate(kinds) if has_kind(kind, Kind.COLBERT)]
    lengths = np.array([item.length for item in items], dtype=np.int64)
    return Batch(items, np.concatenate(ids), lengths, wanted, np.array(colbert, dtype=np.int64), lane)


Row = tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]


def per_item(batch: Batch, out: Outputs) -> Iterator[Row]:
    """Each item's dense vector, token weights, ColBERT rows and cross-encoder logit (a rerank
    batch's only output), cut from the packed outputs."""
    tokens = Packing(batch.lengths.tolist())
    colbert_rows = Packing(batch.lengths[batch.colbert_texts].tolist())
    colbert_of = {row: k for k, row in enumerate(batch.colbert_texts.tolist())}
    for row in range(len(batch.items)):
        k = colbert_of.get(row)
        yield (
            None if out.dense is None else out.dense[row],
            None if out.sparse is None else out.sparse[tokens.tokens(row)],
            None if out.colbert is None or k is None else out.colbert[colbert_rows.colbert(k)],
            None if out.logits is None else out.logits[row],
        )
