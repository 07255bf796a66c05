"""What an embedding job gives back to the web worker: typed reads of its filled segment.

The vectors stay in shared memory until the result is closed; each accessor
returns a view or a small array for one input, so the caller never needs to
know the segment's layout or the packing of its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gpu_pool.m3math import lexical_weights
from gpu_pool.wire.packing import Packing
from gpu_pool.wire.segment import Segment


class EmbeddingResult:
    """Use as a context manager; views taken from it must not outlive ``close``."""

    def __init__(self, segment: Segment, ids: Sequence[np.ndarray], unused_ids: np.ndarray) -> None:
        self._segment, self._arrays = segment, segment.arrays
        self.ids = list(ids)  # each input's token ids, as sent
        self.unused_ids = unused_ids  # special tokens that sparse weights leave out
        self._packing = Packing([len(x) for x in self.ids])

    def __len__(self) -> int:
        return len(self.ids)

    def dense(self, i: int) -> np.ndarray:
        """[dim], L2-normalised."""
        row: np.ndarray = self._arrays["dense"][i]  # annotated: numpy types an integer index as Any
        return row

    def token_weights(self, i: int) -> np.ndarray:
        """[tokens]: the sparse head's weight at each token position of input ``i``."""
        return self._arrays["sparse"][self._packing.tokens(i)]

    def sparse(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Lexical weights as FlagEmbedding keeps them: token ids (sorted) and their weights."""
        return lexical_weights(self.ids[i], self.token_weights(i), self.unused_ids)

    def colbert(self, i: int) -> np.ndarray:
        """[tokens - 1, dim]: a row per token after ``<s>``, each L2-normalised."""
        return self._arrays["colbert"][self._packing.colbert(i)]

    def close(self) -> None:
        self._arrays = {}
        self._segment.close()

    def __enter__(self) -> EmbeddingResult:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
