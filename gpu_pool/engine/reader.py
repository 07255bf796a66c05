"""The reader thread: takes jobs off the request pipe, attaches their shared memory and queues
their inputs (a query's batch made at once: ``Planner.plan_queries``); drops the jobs cancelled
before their first pass; hears ``Stop``."""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import Connection

from gpu_pool.engine.jobs import ActiveJob, JobTable
from gpu_pool.engine.planner import POLL_S, Handoff, Planner
from gpu_pool.engine.score_job import ActiveScoreJob
from gpu_pool.wire import protocol
from gpu_pool.wire.frames import FrameReader
from gpu_pool.wire.protocol import Cancel, Job, Lane, ScoreJob, Stop
from gpu_pool.wire.segment_pool import EngineMappings
from gpu_pool.wire.shared import EngineShared, EngineStats

log = logging.getLogger("gpu_pool.engine")


class Reader:
    def __init__(self, requests: Connection, dim: int, table: JobTable, handoff: Handoff, planner: Planner,
                 shared: EngineShared) -> None:
        self._requests, self._dim, self._table, self._handoff, self._shared = requests, dim, table, handoff, shared
        self._planner = planner
        self._mappings = EngineMappings()  # this thread's alone
        self._seq = 0
        self._parent = os.getppid()

    def run(self) -> None:
        frames = FrameReader(self._requests)
        while not self._handoff.stopping:
            if os.getppid() != self._parent:
                log.error("The server's master process is gone; the engine stops")
                self.stop()
                return
            try:
                messages = [protocol.decode(frame) for frame in frames.read(POLL_S)]
            except (EOFError, OSError):
                self.stop()
                return
            self._mappings.sweep()
            self._handle(messages)

    def stop(self) -> None:
        with self._handoff.ready:
            self._handoff.stopping = True
            self._handoff.ready.notify()
            self._handoff.prepared.notify()

    def _handle(self, messages: list[protocol.Message]) -> None:
        # A job cancelled in the same read is never accepted: no pass can begin in between.
        cancelled = {m.job_id for m in messages if isinstance(m, Cancel)}
        jobs = [m for m in messages if isinstance(m, Job) and m.job_id not in cancelled]
        if unseen := sum(isinstance(m, Job) for m in messages) - len(jobs):
            self._shared.add_stats(EngineStats(dropped_requests=unseen))
        self._accept(jobs)
        for message in messages:
            if isinstance(message, Stop):
                self.stop()
            elif isinstance(message, Cancel):
                self._cancel(message.job_id)

    def _accept(self, jobs: list[Job]) -> None:
        """Queue the jobs read together in one go, so that they can share a pass."""
        actives = [active for job in jobs if (active := self._attach(job)) is not None]
        if not actives:
            return
        with self._handoff.ready:
            self._table.add(actives)
            self._planner.plan_queries()
            if any(active.job.lane == Lane.BULK for active in actives):
                self._handoff.ready.notify()  # the planner thread makes the bulk batches

    def _attach(self, job: Job) -> ActiveJob | None:
        self._seq += 1
        try:
            # A score job keeps its vectors in the engine and writes only scores.
            active_type = ActiveScoreJob if isinstance(job, ScoreJob) else ActiveJob
            return active_type.attach(job, self._seq, self._dim, self._mappings)
        except FileNotFoundError:
            self._shared.add_stats(EngineStats(dropped_requests=1))  # the web worker gave up on it already
            return None

    def _cancel(self, job_id: int) -> None:
        with self._handoff.ready:
            active = self._table.by_job_id(job_id)
            if active is not None and active.began is None:
                self._table.drop([active])
