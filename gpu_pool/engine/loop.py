"""The engine's loop: jobs in from the request pipe, batches through the model, answers out.

Three threads, so that the device never waits on Python:

- the reader takes jobs off the request pipe, attaches their shared memory and
  queues their inputs;
- the planner chooses the next batch (``batching.plan_batch``) and packs its
  ids into one row while the current batch runs. An idle device gets a batch at once; while it is
  busy the next batch keeps filling until it is full (``batch_size`` jobs or
  ``max_batch_tokens``) or its oldest job has waited ``batch_timeout_ms``.
  At most ``concurrency`` batches are in hand: one running, the rest prepared;
- the main thread runs the model once per batch, computing only the heads some
  job in it asked for, writes each input's vectors into its job's segment and
  answers every job whose inputs are all done.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from multiprocessing.connection import Connection

from gpu_pool.engine.batch import Batch, Model, pack, per_item
from gpu_pool.engine.batching import Item, plan_batch
from gpu_pool.engine.jobs import ActiveJob
from gpu_pool.engine.score_job import ScoringJob
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.wire import protocol
from gpu_pool.wire.frames import FrameReader
from gpu_pool.wire.protocol import Done, ErrorCode, Failed, Job, Kind, ScoreJob, Stop
from gpu_pool.wire.segment_pool import EngineMappings
from gpu_pool.wire.shared import EngineShared

log = logging.getLogger("gpu_pool.engine")

_POLL_S = 0.25
_DONE_CHUNK = 256


class Engine:
    def __init__(self, spec: EngineSpec, model: Model, requests: Connection, slots: list[Connection],
                 shared: EngineShared) -> None:
        self.spec, self.model, self.requests, self.slots, self.shared = spec, model, requests, slots, shared
        self.jobs: dict[int, ActiveJob] = {}
        self.mappings = EngineMappings()  # the reader thread's
        self.pending: list[Item] = []
        self.prepared: deque[Batch] = deque()
        self.in_hand = 0  # batches prepared or running
        self.ready = threading.Condition()
        self.stopping = False
        self.planner_done = False
        self._seq = 0
        self._parent = os.getppid()

    # -- the reader thread ---------------------------------------------------------

    def read_requests(self) -> None:
        frames = FrameReader(self.requests)
        while not self.stopping:
            if os.getppid() != self._parent:
                log.error("The server's master process is gone; the engine stops")
                self._stop()
                return
            try:
                messages = [protocol.decode(frame) for frame in frames.read(_POLL_S)]
            except (EOFError, OSError):
                self._stop()
                return
            self.mappings.sweep()
            for message in messages:
                if isinstance(message, Stop):
                    self._stop()
                elif isinstance(message, Job):
                    self._accept(message)

    def _accept(self, job: Job) -> None:
        self._seq += 1
        try:
            # A score job keeps its vectors in the engine and writes only scores.
            active_type = ScoringJob if isinstance(job, ScoreJob) else ActiveJob
            active = active_type.attach(job, self._seq, self.model.dim, self.mappings)
        except FileNotFoundError:
            return  # the web worker gave up on it already
        with self.ready:
            self.jobs[active.seq] = active
            self.pending.extend(active.items())
            self.ready.notify_all()

    def _stop(self) -> None:
        with self.ready:
            self.stopping = True
            self.ready.notify_all()

    # -- the planner thread --------------------------------------------------------

    def plan_batches(self) -> None:
        while True:
            with self.ready:
                items = self._gather()
                if items is None:
                    self.planner_done = True
                    self.ready.notify_all()
                    return
                # Packed under the lock, so that no job is released (failed) in the middle of the copy.
                self.prepared.append(self._prepare(items))
                self.in_hand += 1
                self.ready.notify_all()

    def _gather(self) -> list[Item] | None:
        """The next batch's items, once it may start; None when stopping with nothing left."""
        while True:
            if self.pending and self.in_hand < self.spec.concurrency:
                wait_s = self._fill_time_left()
                if wait_s <= 0:
                    items = plan_batch(self.pending, self.spec.batch_size, self.spec.max_batch_tokens)
                    taken = {(item.job_seq, item.index) for item in items}
                    self.pending = [i for i in self.pending if (i.job_seq, i.index) not in taken]
                    return items
                self.ready.wait(wait_s)
            elif self.stopping and not self.pending:
                return None
            else:
                self.ready.wait(_POLL_S)

    def _fill_time_left(self) -> float:
        """How much longer the next batch may keep filling; 0 or less: start it now."""
        if self.in_hand == 0 or self.stopping:
            return 0.0  # an idle device never waits
        jobs = {item.job_seq for item in self.pending}
        if len(jobs) >= self.spec.batch_size or sum(i.length for i in self.pending) >= self.spec.max_batch_tokens:
            return 0.0
        oldest = self.jobs[self.pending[0].job_seq].arrived
        return oldest + self.spec.batch_timeout_ms / 1000 - time.monotonic()

    def _prepare(self, items: list[Item]) -> Batch:
        actives = [self.jobs[item.job_seq] for item in items]
        return pack(items, [active.ids(item.index) for item, active in zip(items, actives, strict=True)],
                    [active.job.kinds for active in actives])

    # -- the main thread -----------------------------------------------------------

    def serve(self) -> None:
        threading.Thread(target=self.read_requests, name="engine-reader", daemon=True).start()
        threading.Thread(target=self.plan_batches, name="engine-planner", daemon=True).start()
        while True:
            with self.ready:
                while not self.prepared and not self.planner_done:
                    self.ready.wait(_POLL_S)
                if not self.prepared:
                    break  # stopping, and nothing left in hand
                batch = self.prepared.popleft()
            self._run(batch)
            with self.ready:
                self.in_hand -= 1
                self.ready.notify_all()
        for active in list(self.jobs.values()):
            self._fail([active], ErrorCode.GONE, "the engine is shutting down")

    def _run(self, batch: Batch) -> None:
        started = time.perf_counter()
        try:
            out = self.model.forward(batch.ids, batch.lengths, batch.kinds, batch.colbert_texts)
        except Exception as exc:  # noqa: BLE001 - a failed pass fails its jobs, the engine goes on
            self._fail_batch(batch, exc)
            return
        touched: dict[int, ActiveJob] = {}
        for item, (dense, sparse, colbert) in zip(batch.items, per_item(batch, out), strict=True):
            active = self.jobs.get(item.job_seq)
            if active is None:
                continue  # failed meanwhile
            active.write(item.index, dense if active.wants(Kind.DENSE) else None,
                         sparse if active.wants(Kind.SPARSE) else None, colbert)
            touched[active.seq] = active
        finished = [a for a in touched.values() if a.remaining == 0]
        self._answer_done(finished)
        self.shared.add_stats(
            processed_requests=len(finished),
            batches=1,
            batched_requests=len(touched),
            batched_inputs=len(batch.items),
            tokens=len(batch.ids),
            processing_seconds=time.perf_counter() - started,
        )

    def _fail_batch(self, batch: Batch, exc: Exception) -> None:
        out_of_memory = "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
        code = ErrorCode.OUT_OF_MEMORY if out_of_memory else ErrorCode.FORWARD_FAILED
        log.error("Forward pass failed for %d inputs: %s", len(batch.items), exc, exc_info=not out_of_memory)
        with self.ready:
            seqs = {item.job_seq for item in batch.items}
            self.pending = [item for item in self.pending if item.job_seq not in seqs]
            failed = [self.jobs[seq] for seq in seqs if seq in self.jobs]
        self._fail(failed, code, "out of memory" if out_of_memory else "the model failed on this batch")

    # -- answers -------------------------------------------------------------------

    def _fail(self, actives: list[ActiveJob], code: ErrorCode, message: str) -> None:
        for active in actives:
            self._release(active)
            self._send(active.job.slot, Failed(active.job.job_id, code, message))
        self.shared.add_stats(failed_requests=len(actives))

    def _answer_done(self, actives: list[ActiveJob]) -> None:
        by_slot: dict[int, list[int]] = {}
        for active in actives:
            self._release(active)
            by_slot.setdefault(active.job.slot, []).append(active.job.job_id)
        for slot, job_ids in by_slot.items():
            # One message per slot and batch; chunks keep each write atomic.
            for start in range(0, len(job_ids), _DONE_CHUNK):
                self._send(slot, Done(tuple(job_ids[start : start + _DONE_CHUNK])))

    def _release(self, active: ActiveJob) -> None:
        with self.ready:
            self.jobs.pop(active.seq, None)
        active.segment.close()

    def _send(self, slot: int, message: Done | Failed) -> None:
        try:
            self.slots[slot].send_bytes(protocol.encode(message))
        except (BlockingIOError, BrokenPipeError):
            log.warning("Dropped an answer to web worker slot %d: it is not reading", slot)


