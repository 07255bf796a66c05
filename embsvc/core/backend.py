"""The port between the web app and the engines: what ``core`` and ``api`` need of
``gpu_pool.EngineClient`` (tests/unit/fake_engine.py is the other implementation)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from gpu_pool import DEFAULT_OPTIONS, EmbeddingResult, EngineSnapshot, EngineState, JobOptions, Kind


class Backend(Protocol):
    def states(self) -> list[EngineState]:
        """Each engine's state, for /health."""
        ...

    def info(self) -> dict[str, object]:
        """A ready engine's device and dtype, and under ``reranker`` the cross-encoder's
        figures (a dict) or None; empty while no engine is ready."""
        ...

    def shared_memory(self) -> dict[str, object]:
        """/dev/shm's ``path``, ``size_bytes``, ``used_bytes``, ``free_bytes``, and ``server_bytes``
        (what this server's segments hold), for /health and /stats."""
        ...

    def snapshot(self) -> list[EngineSnapshot]:
        """Per engine: state, queue, restarts and figures, for /stats and /metrics."""
        ...

    def embed(self, ids: list[np.ndarray], kinds: Kind, unused_ids: np.ndarray,
              options: JobOptions = DEFAULT_OPTIONS) -> EmbeddingResult:
        """The inputs' vectors; raises ``gpu_pool.EngineError`` when they cannot be had.
        ``options``: the request's lane, and how to tell that its client has left."""
        ...

    def score(self, ids: list[np.ndarray], weights: tuple[float, float, float],
              unused_ids: np.ndarray, options: JobOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """[documents, len(SCORE_MODES)] scores of inputs 1.. against input 0."""
        ...

    def rerank(self, ids: list[np.ndarray], options: JobOptions = DEFAULT_OPTIONS) -> np.ndarray:
        """float32 raw logits of the cross-encoder, one per (query, passage) pair of ids; raises
        ``gpu_pool.ModelNotServed`` where the engines hold no cross-encoder."""
        ...
