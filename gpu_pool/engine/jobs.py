"""The jobs inside the engine: each one's segment and where its outputs go (``ActiveJob``), and
the table of them all with their inputs queued for a pass (``JobTable``)."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import numpy as np

from gpu_pool.engine.choosing import Item, choose_batch
from gpu_pool.wire.packing import Packing
from gpu_pool.wire.protocol import Job, Kind, Lane, has_kind
from gpu_pool.wire.segment import Layout, Segment
from gpu_pool.wire.segment_pool import EngineMappings
from gpu_pool.wire.shared import EngineShared, EngineStats


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
        rerank = self.wants(Kind.RERANK)
        return [Item(self.seq, i, n, rerank) for i, n in enumerate(self.packing.lengths)]

    def ids(self, index: int) -> np.ndarray:
        return self.segment.arrays["ids"][self.packing.tokens(index)]

    def wants(self, kind: Kind) -> bool:
        return has_kind(self.job.kinds, kind)

    def expired(self, now: float) -> bool:
        """Its request timed out before its first pass: nobody waits for it any more."""
        return self.began is None and self.job.deadline < now

    def write(self, index: int, dense: np.ndarray | None, sparse: np.ndarray | None,
              colbert: np.ndarray | None, logit: np.ndarray | None = None) -> None:
        """Store one input's outputs (rows already cut to its length; ``logit``: a rerank pair's score)."""
        arrays = self.segment.arrays
        if logit is not None and "logits" in arrays:
            arrays["logits"][index] = logit
        if dense is not None and "dense" in arrays:
            arrays["dense"][index] = dense
        if sparse is not None and "sparse" in arrays:
            arrays["sparse"][self.packing.tokens(index)] = sparse
        if colbert is not None and "colbert" in arrays:
            arrays["colbert"][self.packing.colbert(index)] = colbert
        self.remaining -= 1


class JobTable:
    """Every job the engine holds, by seq and by job id, and per lane the inputs queued for their
    pass (in arrival order). Written by every thread of the engine: callers hold the engine's
    condition (``Handoff.ready``) around each call."""

    def __init__(self, shared: EngineShared) -> None:
        self._shared = shared  # for the queue gauges and the dropped jobs' count
        self._by_seq: dict[int, ActiveJob] = {}
        self._seq_of: dict[int, int] = {}  # job id -> seq, for Cancel
        self.queued: dict[Lane, list[Item]] = {Lane.INTERACTIVE: [], Lane.BULK: []}

    def add(self, actives: Iterable[ActiveJob]) -> None:
        for active in actives:
            self._by_seq[active.seq] = active
            self._seq_of[active.job.job_id] = active.seq
            self.queued[active.job.lane].extend(active.items())
        self._count_queues()

    def __getitem__(self, seq: int) -> ActiveJob:
        return self._by_seq[seq]

    def get(self, seq: int) -> ActiveJob | None:
        return self._by_seq.get(seq)

    def by_job_id(self, job_id: int) -> ActiveJob | None:
        return self._by_seq.get(self._seq_of.get(job_id, -1))

    def held(self, items: Iterable[Item]) -> list[Item]:
        """The items whose job is still held (not answered, failed or dropped meanwhile)."""
        return [item for item in items if item.job_seq in self._by_seq]

    def all(self) -> list[ActiveJob]:
        return list(self._by_seq.values())

    def take(self, lane: Lane, max_jobs: int, max_tokens: int) -> list[Item]:
        """The next batch's items of ``lane``, out of its queue."""
        items = choose_batch(self.queued[lane], max_jobs, max_tokens)
        taken = {(item.job_seq, item.index) for item in items}
        self.queued[lane] = [i for i in self.queued[lane] if (i.job_seq, i.index) not in taken]
        self._count_queues()
        return items

    def mark_began(self, items: Iterable[Item], now: float) -> None:
        for seq in {item.job_seq for item in items}:
            active = self._by_seq.get(seq)
            if active is not None and active.began is None:
                active.began = now

    def unqueue(self, seqs: Collection[int]) -> None:
        """Take the items of these jobs out of the queues."""
        for lane, items in self.queued.items():
            self.queued[lane] = [item for item in items if item.job_seq not in seqs]
        self._count_queues()

    def forget(self, active: ActiveJob) -> None:
        """Let go of a job answered, failed or dropped (its caller closes its segment)."""
        self._by_seq.pop(active.seq, None)
        self._seq_of.pop(active.job.job_id, None)

    def drop(self, actives: Collection[ActiveJob]) -> None:
        """Forget jobs that never began: no pass, no answer (nobody waits for them). Their items
        in batches already made are left out when those run (``held``)."""
        self.unqueue({active.seq for active in actives})
        for active in actives:
            self.forget(active)
            active.segment.close()
        self._shared.add_stats(EngineStats(dropped_requests=len(actives)))

    def drop_expired(self, seqs: Iterable[int] | None = None) -> None:
        """Drop the jobs (of ``seqs``; None: all) whose request timed out before their first pass."""
        now = time.monotonic()
        actives = self._by_seq.values() if seqs is None else filter(None, map(self._by_seq.get, seqs))
        if expired := [active for active in actives if active.expired(now)]:
            self.drop(expired)

    def oldest_arrival(self, lane: Lane) -> float:
        """When the job of the lane's first queued item arrived (the lane's queue is not empty)."""
        return self._by_seq[self.queued[lane][0].job_seq].arrived

    def _count_queues(self) -> None:
        self._shared.set_queues(interactive=len({i.job_seq for i in self.queued[Lane.INTERACTIVE]}),
                                bulk=len({i.job_seq for i in self.queued[Lane.BULK]}))
