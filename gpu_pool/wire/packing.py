"""Where each input's tokens and ColBERT rows sit when inputs are packed: the one place that knows.

Inputs are stored one after another, without padding, in a segment, in a batch
and in the model's hidden states alike. Input ``i`` of lengths ``n`` has

- its tokens (ids, sparse weights, hidden states) at ``token_start[i] : token_start[i] + n[i]``;
- its ColBERT rows at ``colbert_start[i] : colbert_start[i] + n[i] - 1``: BGE-M3 keeps one
  row per token after ``<s>``, so packed inputs hold ``sum(n) - len(n)`` rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def colbert_rows(length: int) -> int:
    """ColBERT rows of an input of ``length`` tokens (every token but ``<s>``)."""
    return length - 1


def total_colbert_rows(n_inputs: int, n_tokens: int) -> int:
    return n_tokens - n_inputs


class Packing:
    """The slices of each input in packed arrays; plain lists, since numpy's per-call
    overhead would dominate for the few inputs of a request."""

    __slots__ = ("_colbert_starts", "_token_starts", "lengths")

    def __init__(self, lengths: Sequence[int]) -> None:
        self.lengths = list(lengths)
        self._token_starts = list(itertools.accumulate(self.lengths, initial=0))
        self._colbert_starts = [start - i for i, start in enumerate(self._token_starts)]

    def __len__(self) -> int:
        return len(self.lengths)

    def tokens(self, i: int) -> slice:
        return slice(self._token_starts[i], self._token_starts[i + 1])

    def colbert(self, i: int) -> slice:
        return slice(self._colbert_starts[i], self._colbert_starts[i + 1])


def token_starts(lengths: np.ndarray) -> np.ndarray:
    """The first token of each input in the packed row."""
    return np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)


def positions(lengths: np.ndarray, first: int) -> np.ndarray:
    """Each token's position within its own input, counted from ``first``."""
    starts = token_starts(lengths)
    # Annotated: numpy types arithmetic between arrays of unknown dtype as Any.
    result: np.ndarray = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths) + first
    return result


def colbert_sources(lengths: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """The packed token rows that become ColBERT rows for ``inputs`` (in that order)."""
    starts = token_starts(lengths)
    if not len(inputs):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(starts[i] + 1, starts[i] + lengths[i]) for i in inputs.tolist()])
