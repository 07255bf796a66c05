"""A job inside the engine: its segment, its inputs, and where each output goes."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from gpu_pool.batching import Item
from gpu_pool.protocol import Job, Kind
from gpu_pool.segment import Layout, Segment
from gpu_pool.segment_pool import EngineMappings


@dataclass
class ActiveJob:
    job: Job
    seq: int
    segment: Segment
    lengths: list[int]
    token_starts: list[int] = field(init=False)
    colbert_starts: list[int] = field(init=False)
    remaining: int = field(init=False)
    arrived: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        # Plain lists: a job has a few inputs, and numpy's per-call overhead would dominate.
        self.token_starts = list(itertools.accumulate(self.lengths, initial=0))[:-1]
        self.colbert_starts = [start - i for i, start in enumerate(self.token_starts)]
        self.remaining = len(self.lengths)

    @classmethod
    def attach(cls, job: Job, seq: int, dim: int, mappings: EngineMappings) -> ActiveJob:
        segment = mappings.attach(job.shm_name, Layout(job.n_inputs, job.n_tokens, dim, job.kinds))
        return cls(job, seq, segment, segment.arrays["lengths"].tolist())

    def items(self) -> list[Item]:
        return [Item(self.seq, i, n) for i, n in enumerate(self.lengths)]

    def ids(self, index: int) -> np.ndarray:
        start = self.token_starts[index]
        return self.segment.arrays["ids"][start : start + self.lengths[index]]

    def wants(self, kind: Kind) -> bool:
        return bool(self.job.kinds & kind)

    def write(self, index: int, dense: np.ndarray | None, sparse: np.ndarray | None,
              colbert: np.ndarray | None) -> None:
        """Store one input's outputs (rows already cut to its length)."""
        arrays, n = self.segment.arrays, self.lengths[index]
        if dense is not None and "dense" in arrays:
            arrays["dense"][index] = dense
        if sparse is not None and "sparse" in arrays:
            start = self.token_starts[index]
            arrays["sparse"][start : start + n] = sparse
        if colbert is not None and "colbert" in arrays:
            start = self.colbert_starts[index]
            arrays["colbert"][start : start + n - 1] = colbert
        self.remaining -= 1
