"""An engine stand-in for app tests: fills real segments with values derived from the ids."""

from __future__ import annotations

import itertools
import os

import numpy as np

from gpu_pool import scoring
from gpu_pool.errors import EngineError
from gpu_pool.protocol import SCORE_KINDS, Kind
from gpu_pool.segment import Layout, Segment
from gpu_pool.shared import EngineState

DIM = 32


class FakeEngine:
    def __init__(self) -> None:
        self.state = EngineState.READY
        self.fail_with: EngineError | None = None
        self.calls: list[tuple[list[np.ndarray], Kind]] = []
        self.score_calls: list[tuple[list[np.ndarray], tuple[float, float, float], tuple[int, ...]]] = []
        self._ids = itertools.count()

    def states(self) -> list[EngineState]:
        return [self.state]

    def info(self) -> dict[str, object]:
        return {"device": "cpu", "dtype": "float32", "dim": DIM}

    def snapshot(self) -> list[dict[str, object]]:
        return [{"index": 0, "device": "cpu", "state": self.state.name.lower(), "queue_size": 0, "restarts": 0,
                 "processed_requests": len(self.calls), "failed_requests": 0, "batches": len(self.calls),
                 "batched_requests": len(self.calls), "batched_inputs": 0, "tokens": 0,
                 "processing_seconds": 0.0}]

    def embed(self, ids: list[np.ndarray], kinds: Kind, dim: int) -> Segment:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((ids, kinds))
        lengths = [len(x) for x in ids]
        seg = Segment.create(f"bgem3-fake-{os.getpid()}-{next(self._ids)}",
                             Layout(len(ids), sum(lengths), dim, kinds))
        a = seg.arrays
        if "dense" in a:
            a["dense"][:] = np.arange(len(ids))[:, None] + 0.5
        if "sparse" in a:
            a["sparse"][:] = np.concatenate(ids) / 1000.0  # weight = id / 1000
        if "colbert" in a:
            a["colbert"][:] = 0.25
        return seg

    def score(self, ids: list[np.ndarray], weights: tuple[float, float, float], unused_ids: tuple[int, ...],
              dim: int) -> Segment:
        """Raw scores derived from each document's length (dense = tokens / 100, sparse = 1 / tokens,
        colbert = 0.5), mixed by the real ``scoring.combine``."""
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((ids, SCORE_KINDS))
        self.score_calls.append((ids, weights, unused_ids))
        lengths = [len(x) for x in ids]
        seg = Segment.create(f"bgem3-fake-{os.getpid()}-{next(self._ids)}",
                             Layout(len(ids), sum(lengths), dim, SCORE_KINDS))
        raw = np.array([[n / 100, 1 / n, 0.5] for n in lengths[1:]])
        seg.arrays["scores"][:] = scoring.combine(raw, weights)
        return seg
