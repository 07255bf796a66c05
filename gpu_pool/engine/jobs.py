"""A job inside the engine: its segment, its inputs, and where each output goes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from gpu_pool.engine.batching import Item
from gpu_pool.wire.packing import Packing
from gpu_pool.wire.protocol import Job, Kind
from gpu_pool.wire.segment import Layout, Segment
from gpu_pool.wire.segment_pool import EngineMappings


@dataclass
class ActiveJob:
    job: Job
    seq: int
    segment: Segment
    packing: Packing
    remaining: int = field(init=False)
    arrived: float = field(default_factory=time.monotonic)
    began: float | None = None  # when its first pass began

    def __post_init__(self) -> None:
        self.remaining = len(self.packing)

    @classmethod
    def attach(cls, job: Job, seq: int, dim: int, mappings: EngineMappings) -> ActiveJob:
        segment = mappings.attach(job.shm_name, Layout(job.n_inputs, job.n_tokens, dim, job.kinds))
        return cls(job, seq, segment, Packing(segment.arrays["lengths"].tolist()))

    def items(self) -> list[Item]:
        return [Item(self.seq, i, n) for i, n in enumerate(self.packing.lengths)]

    def ids(self, index: int) -> np.ndarray:
        return self.segment.arrays["ids"][self.packing.tokens(index)]

    def wants(self, kind: Kind) -> bool:
        return bool(self.job.kinds & kind)

    def write(self, index: int, dense: np.ndarray | None, sparse: np.ndarray | None,
              colbert: np.ndarray | None) -> None:
        """Store one input's outputs (rows already cut to its length)."""
        arrays = self.segment.arrays
        if dense is not None and "dense" in arrays:
            arrays["dense"][index] = dense
        if sparse is not None and "sparse" in arrays:
            arrays["sparse"][self.packing.tokens(index)] = sparse
        if colbert is not None and "colbert" in arrays:
            arrays["colbert"][self.packing.colbert(index)] = colbert
        self.remaining -= 1
