"""The engine's loop: jobs in from the request pipe, batches through the model, answers out.

Three threads, four on a GPU, so that the device never waits on Python:

- the reader takes jobs off the request pipe, attaches their shared memory and
  queues their inputs;
- the planner chooses the next batch of each lane (``batching.plan_batch``) and packs
  its ids into one row while the current batch runs. An interactive batch is made at
  once (one waits at a time; later queries gather into the next). A bulk batch is
  made at once for an idle device; while the device is busy it keeps filling until
  it is full (``batch_size`` jobs or its token budget, sized by time:
  ``lanes.PassSizer``) or its oldest job has waited ``batch_timeout_ms``. At most
  ``concurrency`` bulk batches are in hand: one running, the rest prepared. Jobs
  whose deadline has passed, or whose client left (``Cancel``), are dropped before
  their first pass;
- the main thread runs the model a step (a part of a layer) at a time, computing only the
  heads some job in the batch asked for, and hands the pass to the answer thread. Between the
  steps of a bulk pass it runs a waiting interactive batch whole (``lanes.may_interleave``).
  A pass that runs out of memory is split in two and retried, down to the one input that
  does not fit;
- on a GPU, the answer thread (``answers.AnswerThread``) waits for a pass's outputs to
  reach the host, writes each input's vectors into its job's segment and answers every job
  whose inputs are all done, while the main thread runs the next pass. It alone answers or
  fails a job once its first pass began. On a CPU the main thread does this itself
  between passes (``answers.Inline``): there the passes use every core.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np

from gpu_pool.engine import answers
from gpu_pool.engine.batch import Batch, pack, per_item
from gpu_pool.engine.batching import Item, plan_batch
from gpu_pool.engine.jobs import ActiveJob
from gpu_pool.engine.lanes import PassSizer, longest_step, may_interleave, next_lane
from gpu_pool.engine.score_job import ScoringJob
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.model.port import Model, Pending, RunningPass
from gpu_pool.wire import protocol
from gpu_pool.wire.frames import FrameReader
from gpu_pool.wire.protocol import Cancel, Done, ErrorCode, Failed, Job, Kind, Lane, ScoreJob, Stop
from gpu_pool.wire.segment_pool import EngineMappings
from gpu_pool.wire.shared import EngineShared

log = logging.getLogger("gpu_pool.engine")

_POLL_S = 0.25
_ANY_TOKEN = 5  # an ordinary token id (0-3 are XLM-R's specials): warm-up passes need no real text
_DONE_CHUNK = 256


@dataclass(frozen=True)
class Launched:
    """A pass whose steps have all been queued (GPU) or run (CPU), its outputs on their way."""

    batch: Batch
    outputs: Pending
    steps: int
    stages: int  # steps per layer
    step_tokens: int  # the most rows one step took
    step_seconds: list[float]  # each step on the host's clock: its time on a CPU only
    interleaved: float  # seconds of interactive passes run between its steps

    def seconds(self) -> float:
        """Its own time on the device, the interleaved passes left out (after ``outputs.wait``)."""
        return max(0.0, self.outputs.seconds() - self.interleaved)


class Engine:
    def __init__(self, spec: EngineSpec, model: Model, requests: Connection, slots: list[Connection],
                 shared: EngineShared) -> None:
        self.spec, self.model, self.requests, self.slots, self.shared = spec, model, requests, slots, shared
        self.jobs: dict[int, ActiveJob] = {}
        self.seq_of: dict[int, int] = {}  # job id -> seq, for Cancel
        self.mappings = EngineMappings()  # the reader thread's
        self.pending: dict[Lane, list[Item]] = {Lane.INTERACTIVE: [], Lane.BULK: []}
        self.urgent: deque[Batch] = deque()  # a prepared interactive batch
        self.prepared: deque[Batch] = deque()  # prepared bulk batches
        self.in_hand = 0  # bulk batches prepared or running
        self.sizer = PassSizer(spec.interactive_max_wait_ms / 1000, spec.max_batch_tokens)
        self.last_lane: Lane | None = None
        self.ready = threading.Condition()
        self.answers = answers.for_device(model.device_name)
        self.stopping = False
        self.planner_done = False
        self._seq = 0
        self._parent = os.getppid()

    def warm_up(self, tokens: int = 256) -> None:
        """Two passes before the first request: the first pays for allocations and kernel
        choices, the second gives the pass sizer the device's rate."""
        ids = np.full(tokens, _ANY_TOKEN, dtype=np.int32)
        batch = pack([Item(0, 0, tokens)], [ids], [Kind.DENSE])
        for _ in range(2):
            launched = self._launch(batch)
            launched.outputs.wait()
            self._learn(launched)

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
            self._handle(messages)

    def _handle(self, messages: list[protocol.Message]) -> None:
        # A job cancelled in the same read is never accepted: no pass can begin in between.
        cancelled = {m.job_id for m in messages if isinstance(m, Cancel)}
        jobs = [m for m in messages if isinstance(m, Job) and m.job_id not in cancelled]
        if unseen := sum(isinstance(m, Job) for m in messages) - len(jobs):
            self.shared.add_stats(dropped_requests=unseen)
        self._accept(jobs)
        for message in messages:
            if isinstance(message, Stop):
                self._stop()
            elif isinstance(message, Cancel):
                self._cancel(message.job_id)

    def _accept(self, jobs: list[Job]) -> None:
        """Queue the jobs read together in one go, so that they can share a pass."""
        actives = [active for job in jobs if (active := self._attach(job)) is not None]
        if not actives:
            return
        with self.ready:
            for active in actives:
                self.jobs[active.seq] = active
                self.seq_of[active.job.job_id] = active.seq
                self.pending[active.job.lane].extend(active.items())
            self._count_queues()
            self.ready.notify_all()

    def _attach(self, job: Job) -> ActiveJob | None:
        self._seq += 1
        try:
            # A score job keeps its vectors in the engine and writes only scores.
            active_type = ScoringJob if isinstance(job, ScoreJob) else ActiveJob
            return active_type.attach(job, self._seq, self.model.dim, self.mappings)
        except FileNotFoundError:
            self.shared.add_stats(dropped_requests=1)  # the web worker gave up on it already
            return None

    def _cancel(self, job_id: int) -> None:
        with self.ready:
            active = self.jobs.get(self.seq_of.get(job_id, -1))
            if active is not None and active.began is None:
                self._drop([active])

    def _stop(self) -> None:
        with self.ready:
            self.stopping = True
            self.ready.notify_all()

    # -- the planner thread --------------------------------------------------------

    def plan_batches(self) -> None:
        while True:
            with self.ready:
                work = self._gather()
                if work is None:
                    self.planner_done = True
                    self.ready.notify_all()
                    return
                lane, items = work
                # Packed under the lock, so that no job is released (failed) in the middle of the copy.
                batch = self._prepare(items, lane)
                if lane == Lane.INTERACTIVE:
                    self.urgent.append(batch)
                else:
                    self.prepared.append(batch)
                    self.in_hand += 1
                self._count_queues()
                self.ready.notify_all()

    def _gather(self) -> tuple[Lane, list[Item]] | None:
        """The next batch's lane and items, once it may be made; None when stopping with nothing left."""
        while True:
            self._drop_expired()
            if self.pending[Lane.INTERACTIVE] and not self.urgent:
                return Lane.INTERACTIVE, self._take(Lane.INTERACTIVE, self.spec.max_batch_tokens)
            wait_s = _POLL_S
            if self.pending[Lane.BULK] and self.in_hand < self.spec.concurrency:
                wait_s = self._fill_time_left()
                if wait_s <= 0:
                    return Lane.BULK, self._take(Lane.BULK, self.sizer.budget())
            elif self.stopping and not any(self.pending.values()):
                return None
            self.ready.wait(min(wait_s, _POLL_S))

    def _take(self, lane: Lane, max_tokens: int) -> list[Item]:
        items = plan_batch(self.pending[lane], self.spec.batch_size, max_tokens)
        taken = {(item.job_seq, item.index) for item in items}
        self.pending[lane] = [i for i in self.pending[lane] if (i.job_seq, i.index) not in taken]
        return items

    def _fill_time_left(self) -> float:
        """How much longer the next bulk batch may keep filling; 0 or less: make it now."""
        if self.in_hand == 0 or self.stopping:
            return 0.0  # an idle device never waits
        pending = self.pending[Lane.BULK]
        jobs = {item.job_seq for item in pending}
        if len(jobs) >= self.spec.batch_size or sum(i.length for i in pending) >= self.sizer.budget():
            return 0.0
        oldest = self.jobs[pending[0].job_seq].arrived
        return oldest + self.spec.batch_timeout_ms / 1000 - time.monotonic()

    def _drop_expired(self) -> None:
        """Drop the jobs nobody waits for any more (their request timed out) before their first pass."""
        now = time.monotonic()
        expired = [a for a in self.jobs.values() if a.began is None and a.job.deadline < now]
        if expired:
            self._drop(expired)

    def _drop(self, actives: list[ActiveJob]) -> None:
        """Forget jobs that never began: no pass, no answer (nobody waits for them). Holds the lock;
        their items in batches already made are left out when those run (``_fresh``)."""
        seqs = {active.seq for active in actives}
        for lane, items in self.pending.items():
            self.pending[lane] = [item for item in items if item.job_seq not in seqs]
        for active in actives:
            self.jobs.pop(active.seq, None)
            self.seq_of.pop(active.job.job_id, None)
            active.segment.close()
        self.shared.add_stats(dropped_requests=len(actives))
        self._count_queues()

    def _count_queues(self) -> None:
        self.shared.set_stats(interactive_queue=len({i.job_seq for i in self.pending[Lane.INTERACTIVE]}),
                              bulk_queue=len({i.job_seq for i in self.pending[Lane.BULK]}))

    def _prepare(self, items: list[Item], lane: Lane) -> Batch:
        actives = [self.jobs[item.job_seq] for item in items]
        return pack(items, [active.ids(item.index) for item, active in zip(items, actives, strict=True)],
                    [active.job.kinds for active in actives], lane)

    # -- the main thread -----------------------------------------------------------

    def serve(self) -> None:
        threading.Thread(target=self.read_requests, name="engine-reader", daemon=True).start()
        threading.Thread(target=self.plan_batches, name="engine-planner", daemon=True).start()
        while (batch := self._next_batch()) is not None:
            self._run(batch)
            self.last_lane = batch.lane
            if batch.lane == Lane.BULK:
                with self.ready:
                    self.in_hand -= 1
                    self.ready.notify_all()
        self.answers.close()
        for active in list(self.jobs.values()):
            self._fail([active], ErrorCode.GONE, "the engine is shutting down")

    def _next_batch(self) -> Batch | None:
        with self.ready:
            while True:
                lane = next_lane(bool(self.urgent), bool(self.prepared), self.last_lane)
                if lane is not None:
                    batch = (self.urgent if lane == Lane.INTERACTIVE else self.prepared).popleft()
                    self.ready.notify_all()  # the planner may prepare the next one
                    return batch
                if self.planner_done:
                    return None  # stopping, and nothing left in hand
                self.ready.wait(_POLL_S)

    def _run(self, waiting: Batch) -> None:
        batch = self._fresh(waiting)
        if batch is None:
            return
        self._note_began(batch)
        try:
            launched = self._launch(batch)
        except Exception as exc:  # noqa: BLE001 - a failed pass fails its jobs, the engine goes on
            self._failed_pass(batch, exc)
            return
        self.answers.submit(lambda: self._answer(launched))

    def _fresh(self, batch: Batch) -> Batch | None:
        """The batch without the jobs dropped, or expired, while it waited (None: nothing left)."""
        now = time.monotonic()
        with self.ready:
            seqs = {item.job_seq for item in batch.items}
            expired = [a for seq in seqs if (a := self.jobs.get(seq)) and a.began is None and a.job.deadline < now]
            if expired:
                self._drop(expired)
            alive = [item for item in batch.items if item.job_seq in self.jobs]
            if len(alive) == len(batch.items):
                return batch
            return self._prepare(alive, batch.lane) if alive else None

    def _launch(self, batch: Batch) -> Launched:
        """The pass, a step at a time; between the steps of a bulk pass, waiting queries run."""
        # A bulk pass of one long text keeps its steps to the budget's rows; queries run whole.
        step_tokens = self.sizer.budget() if batch.lane == Lane.BULK else None
        running = self.model.start(batch.ids, batch.lengths, batch.kinds, batch.colbert_texts, step_tokens)
        began, interleaved = time.perf_counter(), 0.0
        step_seconds: list[float] = []  # each step's own time, the interleaved passes left out
        step_began = began
        while not running.step():
            step_seconds.append(time.perf_counter() - step_began)
            if batch.lane == Lane.BULK and self.urgent:  # a deque's truth is safe to read unlocked
                # On a GPU the steps queued so far finish first: the query then queues behind
                # none of them, and the clock below measures the device, not the queueing.
                running.sync()
                interleaved += self._interleave(running, time.perf_counter() - began - interleaved, interleaved)
            step_began = time.perf_counter()
        step_seconds.append(time.perf_counter() - step_began)
        return Launched(batch, running.outputs_async(), running.steps, running.stages, running.step_tokens,
                        step_seconds, interleaved)

    def _learn(self, launched: Launched) -> None:
        """A bulk pass's times, for the sizing of the next ones (after its outputs arrived)."""
        # On a GPU the steps are only queued: their host times are not the device's, and the
        # average step (the pass's device time) stands for them.
        cpu = self.model.device_name.startswith("cpu")
        longest = longest_step(launched.step_seconds, launched.stages) if cpu else 0.0
        self.sizer.observe(len(launched.batch.ids), launched.steps, launched.seconds(), longest,
                           launched.step_tokens)
        rate = self.sizer.tokens_per_second()
        self.shared.set_stats(tokens_per_second=rate or 0.0, bulk_pass_tokens=self.sizer.budget())

    def _interleave(self, running: RunningPass, bulk_s: float, interactive_s: float) -> float:
        """Run the waiting interactive batch now, if bulk has had its share; the time it took."""
        if not may_interleave(bulk_s, interactive_s, self.spec.bulk_share):
            return 0.0
        with self.ready:
            if not self.urgent:
                return 0.0
            batch = self.urgent.popleft()
            self.ready.notify_all()
        began = time.perf_counter()
        self._run(batch)
        running.sync()  # on a GPU, until the query has run: the clock measures the device
        self.shared.add_stats(preemptions=1)
        return time.perf_counter() - began

    def _note_began(self, batch: Batch) -> None:
        now = time.monotonic()
        for seq in {item.job_seq for item in batch.items}:
            active = self.jobs.get(seq)
            if active is not None and active.began is None:
                active.began = now

    def _failed_pass(self, batch: Batch, exc: Exception) -> None:
        """Out of memory: split the batch and retry the halves, so that only the input that does
        not fit alone fails. Any other error fails the batch's jobs."""
        out_of_memory = "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
        if not out_of_memory:
            log.error("Forward pass failed for %d inputs: %s", len(batch.items), exc, exc_info=True)
            self._fail_later(batch.items, ErrorCode.FORWARD_FAILED, "the model failed on this batch")
            return
        self.model.release_memory()
        if len(batch.items) == 1:
            item = batch.items[0]
            log.error("Out of memory on one input of %d tokens: %s", item.length, exc)
            self._fail_later(batch.items, ErrorCode.OUT_OF_MEMORY,
                             f"an input of {item.length} tokens needs more memory than the device has")
            return
        log.warning("Out of memory on %d inputs (%d tokens); retrying in two halves",
                    len(batch.items), len(batch.ids))
        half = len(batch.items) // 2
        for items in (batch.items[:half], batch.items[half:]):
            with self.ready:
                alive = [item for item in items if item.job_seq in self.jobs]
                retry = self._prepare(alive, batch.lane) if alive else None
            if retry is not None:
                self._run(retry)

    def _fail_later(self, items: list[Item], code: ErrorCode, message: str) -> None:
        """Fail the jobs of ``items`` on the answer thread, after the answers of earlier passes."""
        self.answers.submit(lambda: self._fail_jobs_of(items, code, message))

    # -- the answer thread ---------------------------------------------------------

    def _answer(self, launched: Launched) -> None:
        """Write a pass's outputs into its jobs' segments and answer the jobs it completes."""
        batch = launched.batch
        try:
            self._deliver(launched)
        except Exception as exc:  # a pass that failed on the device (or a bug here) fails its jobs
            log.error("Forward pass failed for %d inputs: %s", len(batch.items), exc, exc_info=True)
            self._fail_jobs_of(batch.items, ErrorCode.FORWARD_FAILED, "the model failed on this batch")

    def _deliver(self, launched: Launched) -> None:
        batch, out = launched.batch, launched.outputs.wait()
        if batch.lane == Lane.BULK:
            self._learn(launched)
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
        self.shared.add_stats(batches=1, batched_requests=len(touched), batched_inputs=len(batch.items),
                              tokens=len(batch.ids), processing_seconds=launched.seconds())

    def _fail_jobs_of(self, items: list[Item], code: ErrorCode, message: str) -> None:
        with self.ready:
            seqs = {item.job_seq for item in items}
            for lane, pending in self.pending.items():
                self.pending[lane] = [item for item in pending if item.job_seq not in seqs]
            failed = [self.jobs[seq] for seq in seqs if seq in self.jobs]
        self._fail(failed, code, message)

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
        self._count_answered(actives)

    def _count_answered(self, actives: list[ActiveJob]) -> None:
        now = time.monotonic()
        sums: dict[str, float] = {"processed_requests": len(actives)}
        for active in actives:
            lane = active.job.lane.name.lower()
            sums[f"{lane}_requests"] = sums.get(f"{lane}_requests", 0) + 1
            sums[f"{lane}_wait_seconds"] = sums.get(f"{lane}_wait_seconds", 0) + (active.began or now) - active.arrived
            sums[f"{lane}_latency_seconds"] = sums.get(f"{lane}_latency_seconds", 0) + now - active.arrived
        self.shared.add_stats(**sums)

    def _release(self, active: ActiveJob) -> None:
        with self.ready:
            self.jobs.pop(active.seq, None)
            self.seq_of.pop(active.job.job_id, None)
        active.segment.close()

    def _send(self, slot: int, message: Done | Failed) -> None:
        try:
            self.slots[slot].send_bytes(protocol.encode(message))
        except (BlockingIOError, BrokenPipeError):
            log.warning("Dropped an answer to web worker slot %d: it is not reading", slot)
