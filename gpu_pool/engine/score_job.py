"""A score job inside the engine: its inputs are batched like any others, but
their vectors stay here and only the scores go to the segment.

Input 0 is the query. A document's scores are computed as soon as both its
vectors and the query's are known, so only the documents that ran before the
query keep their ColBERT rows in memory meanwhile. When the last input is done,
the weighted modes are added and the ``scores`` region written; the engine then
answers ``Done`` as for any job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from gpu_pool import m3math
from gpu_pool.engine.jobs import ActiveJob
from gpu_pool.m3math import Vectors
from gpu_pool.wire.protocol import ScoreJob


@dataclass
class ActiveScoreJob(ActiveJob):
    query: Vectors | None = field(default=None, init=False)
    waiting: dict[int, Vectors] = field(default_factory=dict, init=False)  # documents done before the query
    raw: np.ndarray = field(init=False)  # [documents, 3]: dense, sparse, colbert
    unused_ids: np.ndarray = field(init=False)
    weights: tuple[float, float, float] = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.job, ScoreJob):
            raise TypeError("an ActiveScoreJob is made from a ScoreJob")
        self.raw = np.zeros((len(self.packing) - 1, 3))
        self.unused_ids = np.array(self.job.unused_ids, dtype=np.int32)
        self.weights = self.job.weights

    def write(self, index: int, dense: np.ndarray | None, sparse: np.ndarray | None,
              colbert: np.ndarray | None, logit: np.ndarray | None = None) -> None:
        """Take one input's outputs (the engine computes all three kinds for a score job)."""
        if dense is None or sparse is None or colbert is None:
            raise ValueError("a score job needs the dense, sparse and ColBERT outputs of every input")
        ids, weights = m3math.lexical_weights(self.ids(index), sparse, self.unused_ids)
        vectors = Vectors(dense, ids, weights, colbert)
        if index == 0:
            self.query = _own(vectors)
            for document, waiting in self.waiting.items():
                self.raw[document - 1] = m3math.raw_scores(self.query, waiting)
            self.waiting.clear()
        elif self.query is None:
            self.waiting[index] = _own(vectors)
        else:
            self.raw[index - 1] = m3math.raw_scores(self.query, vectors)
        self.remaining -= 1
        if self.remaining == 0:
            self.segment.arrays["scores"][:] = m3math.combine(self.raw, self.weights)


def _own(vectors: Vectors) -> Vectors:
    """A copy that keeps no view of the batch's output arrays alive."""
    return dataclasses.replace(vectors, dense=vectors.dense.copy(), colbert=vectors.colbert.copy())
