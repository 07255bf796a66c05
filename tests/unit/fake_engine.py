"""An engine stand-in for app tests: fills real segments with values derived from the ids."""

from __future__ import annotations

import itertools
import os

import numpy as np

from gpu_pool import (
    DEFAULT_OPTIONS,
    EmbeddingResult,
    EngineError,
    EngineSnapshot,
    EngineState,
    EngineStats,
    JobOptions,
    Kind,
    m3math,
)
from gpu_pool.wire.segment import Layout, Segment

DIM = 32


class FakeEngine:
    """Implements embsvc.core.backend.Backend."""

    def __init__(self) -> None:
        self.state = EngineState.READY
        self.fail_with: EngineError | None = None
        self.calls: list[tuple[list[np.ndarray], Kind]] = []
        self.score_calls: list[tuple[list[np.ndarray], tuple[float, float, float], tuple[int, ...]]] = []
        # What info() says of the cross-encoder; an app with RERANKER_PATH set has one.
        self.reranker: dict[str, object] | None = None
        self.rerank_calls: list[list[np.ndarray]] = []  # each call's (query, passage) pairs
        self.options: list[JobOptions] = []  # how each call asked to be run
        self._ids = itertools.count()

    def states(self) -> list[EngineState]:
        return [self.state]

    def info(self) -> dict[str, object]:
        return {"device": "cpu", "dtype": "float32", "reranker": self.reranker}

    def shared_memory(self) -> dict[str, object]:
        return {"path": "/dev/shm", "size_bytes": 64 << 20, "used_bytes": 1 << 20, "free_bytes": 63 << 20,
                "server_bytes": 1 << 20}

    def snapshot(self) -> list[EngineSnapshot]:
        calls = len(self.calls)
        stats = EngineStats(processed_requests=calls, batches=calls, batched_requests=calls)
        return [EngineSnapshot(0, "cpu", self.state, queue_size=0, restarts=0, stats=stats)]

    def embed(self, ids: list[np.ndarray], kinds: Kind, unused_ids: np.ndarray,
              options: JobOptions = DEFAULT_OPTIONS) -> EmbeddingResult:
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((ids, kinds))
        self.options.append(options)
        seg = self._segment(ids, kinds)
        a = seg.arrays
        if "dense" in a:
            a["dense"][:] = np.arange(len(ids))[:, None] + 0.5
        if "sparse" in a:
            a["sparse"][:] = np.concatenate(ids) / 1000.0  # weight = id / 1000
        if "colbert" in a:
            a["colbert"][:] = 0.25
        return EmbeddingResult(seg, ids, unused_ids)

    def score(self, ids: list[np.ndarray], weights: tuple[float, float, float],
              unused_ids: np.ndarray, options: JobOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """Raw scores derived from each document's length (dense = tokens / 100, sparse = 1 / tokens,
        colbert = 0.5), mixed by the real ``m3math.combine``."""
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((ids, Kind.DENSE | Kind.SPARSE | Kind.COLBERT | Kind.SCORE))
        self.options.append(options)
        self.score_calls.append((ids, weights, tuple(unused_ids.tolist())))
        raw = np.array([[len(x) / 100, 1 / len(x), 0.5] for x in ids[1:]])
        return m3math.combine(raw, weights)

    def rerank(self, ids: list[np.ndarray], options: JobOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """The cross-encoder's logits: each pair's length in tokens less 10, over 10."""
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((ids, Kind.RERANK))
        self.options.append(options)
        self.rerank_calls.append(ids)
        return np.array([(len(x) - 10.0) / 10 for x in ids], dtype=np.float32)

    def _segment(self, ids: list[np.ndarray], kinds: Kind) -> Segment:
        return Segment.create(f"bgem3-fake-{os.getpid()}-{next(self._ids)}",
                              Layout(len(ids), sum(len(x) for x in ids), DIM, kinds))
