"""Inputs longer than the model's window, embedded in windows and put back together, and
OpenAI's shortened dense vectors: both are views of an engine's result, in the web worker.

A long input's tokens are cut into consecutive windows of at most ``max_length`` tokens, with no
overlap, each with its own ``<s>`` and ``</s>``: every token is embedded once, so ``usage`` is
what was computed, and the windows are ordinary inputs to the engine. Put back together:

- dense: the windows' dense vectors averaged, each weighted by its tokens, then L2-normalised;
- sparse: each token id's largest weight over the windows (the rule FlagEmbedding already
  applies to an id repeated within one text);
- ColBERT: the windows' rows in order.

An input that fits in one window is its window: its vectors are the engine's, unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

DENSE_DIM = 1024  # bge-m3's dense vectors: the most OpenAI's ``dimensions`` may ask for


class Vectors(Protocol):
    """What the serializers read of a result (``gpu_pool.EmbeddingResult`` and ``Windowed``)."""

    ids: list[np.ndarray]
    unused_ids: np.ndarray

    def __len__(self) -> int: ...

    def dense(self, i: int) -> np.ndarray: ...

    def token_weights(self, i: int) -> np.ndarray: ...

    def sparse(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...

    def colbert(self, i: int) -> np.ndarray: ...


def split(ids: np.ndarray, window: int) -> list[np.ndarray]:
    """``ids`` (``<s>`` … ``</s>``) as windows of at most ``window`` ids, each opened and closed
    by those two; ids that fit are one window, themselves."""
    if len(ids) <= window:
        return [ids]
    inner, step = ids[1:-1], window - 2
    return [np.concatenate((ids[:1], inner[k:k + step], ids[-1:])) for k in range(0, len(inner), step)]


def split_all(encoded: Sequence[np.ndarray], window: int) -> tuple[list[np.ndarray], list[int]]:
    """Every input's windows in order, and how many windows each input has."""
    windows: list[np.ndarray] = []
    counts = []
    for ids in encoded:
        parts = split(ids, window)
        windows.extend(parts)
        counts.append(len(parts))
    return windows, counts


def unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` in float32, L2-normalised (a zero vector stays zero)."""
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def largest_by_id(ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each id once (sorted), with its largest weight."""
    order = np.lexsort((-weights, ids))  # by id, heaviest first within an id
    ids, weights = ids[order], weights[order]
    first = np.ones(len(ids), dtype=bool)
    np.not_equal(ids[1:], ids[:-1], out=first[1:])
    return ids[first], weights[first]


class Windowed:
    """The inputs of a result whose rows are windows: input ``i`` is ``counts[i]`` consecutive
    rows. ``dimensions``: dense vectors cut to their first n components and normalised again
    (None: whole). Views it returns must not outlive the result."""

    def __init__(self, result: Vectors, counts: Sequence[int], dimensions: int | None = None) -> None:
        self._result, self._dimensions = result, dimensions
        bounds = np.cumsum([0, *counts]).tolist()
        self._rows = [range(a, b) for a, b in itertools.pairwise(bounds)]
        self.unused_ids = result.unused_ids
        self.ids = [self._joined(rows, lambda r: result.ids[r]) for rows in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def _joined(rows: range, part: Callable[[int], np.ndarray]) -> np.ndarray:
        """The rows' parts end to end; one row's part as it is (a view)."""
        if len(rows) == 1:
            return part(rows[0])
        return np.concatenate([part(r) for r in rows])

    def dense(self, i: int) -> np.ndarray:
        rows = self._rows[i]
        if len(rows) == 1:
            vector = self._result.dense(rows[0])
        else:
            weights = np.array([len(self._result.ids[r]) for r in rows], dtype=np.float32)
            stacked = np.stack([self._result.dense(r) for r in rows]).astype(np.float32)
            vector = unit(weights @ stacked)
        if self._dimensions is None or self._dimensions >= len(vector):
            return vector
        return unit(vector[: self._dimensions])

    def token_weights(self, i: int) -> np.ndarray:
        return self._joined(self._rows[i], self._result.token_weights)

    def sparse(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows[i]
        if len(rows) == 1:
            return self._result.sparse(rows[0])
        parts = [self._result.sparse(r) for r in rows]
        return largest_by_id(np.concatenate([ids for ids, _ in parts]), np.concatenate([w for _, w in parts]))

    def colbert(self, i: int) -> np.ndarray:
        return self._joined(self._rows[i], self._result.colbert)
