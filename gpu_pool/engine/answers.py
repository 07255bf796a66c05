"""What becomes of a pass once the device has run it: its outputs written, its jobs answered.

``Answerer`` writes each input's vectors into its job's segment, answers every job whose
inputs are all done, fails the jobs of a pass that failed, and learns the pass's time for
the sizing of the next ones. Once a job's first pass began, it alone answers or fails it.

Which thread runs it depends on the device (``device_thread.for_device``). On a GPU it is
an answer thread (``AnswerThread``), one per lane (``LaneAnswers``): the device thread queues
a pass's kernels, hands the pass over and queues the next one, so that waiting for the
outputs' copy to the host, writing the vectors into the jobs' shared memory and sending the
answers overlap the next pass's kernels. A lane's tasks run one at a time in the order given,
so a job's failure never overtakes the writes of its earlier passes (a job's passes are all of
one lane). ``submit`` waits while ``depth`` tasks of the lane are waiting or running: the device
thread stays at most that many passes ahead of the answers. On a CPU the device thread runs
it itself, between passes (``device_thread.Inline``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from gpu_pool.devices import is_cpu
from gpu_pool.engine.choosing import Item
from gpu_pool.engine.jobs import ActiveJob, JobTable
from gpu_pool.engine.lanes import PassSizer, longest_step
from gpu_pool.engine.packed import Batch, per_item
from gpu_pool.model.port import Pending
from gpu_pool.wire import protocol
from gpu_pool.wire.protocol import Done, ErrorCode, Failed, Kind, Lane, has_kind
from gpu_pool.wire.shared import EngineShared, EngineStats

log = logging.getLogger("gpu_pool.engine")

Task = Callable[[], None]

_DONE_CHUNK = 256
# What torch says when the device itself failed (a kernel's bad address, a device-side assert):
# the CUDA context is then lost for good, and every later pass would fail the same way.
_DEVICE_FAULT_TEXTS = ("CUDA error", "device-side assert", "illegal memory access")
DEVICE_FAULT_MESSAGE = "the device failed; its engine restarts, retry the request"


class DeviceFault(Exception):
    """The device failed in a way no retry on it mends: the engine ends and the pool starts another."""


def is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def is_device_fault(exc: BaseException) -> bool:
    """A fault of the device other than running out of memory (torch.AcceleratorError, or a
    RuntimeError carrying CUDA's error text)."""
    if is_out_of_memory(exc):
        return False
    if type(exc).__name__ == "AcceleratorError":
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _DEVICE_FAULT_TEXTS)


@dataclass(frozen=True)
class Launched:
    """A pass whose steps have all been queued (GPU) or run (CPU), its outputs on their way."""

    batch: Batch
    outputs: Pending
    steps: int
    steps_per_layer: int
    step_tokens: int  # the most rows one step took
    step_seconds: list[float]  # each step on the host's clock: its time on a CPU only
    interleaved: float  # seconds of interactive passes run between its steps

    def seconds(self) -> float:
        """Its own time on the device, the interleaved passes left out (after ``outputs.wait``)."""
        return max(0.0, self.outputs.seconds() - self.interleaved)


class Answerer:
    """Answers passes and fails jobs, on the thread the device thread hands them to."""

    def __init__(self, device_name: str, table: JobTable, ready: threading.Condition, slots: list[Connection],
                 shared: EngineShared, sizer: PassSizer) -> None:
        self._table, self._ready, self._slots, self._shared, self._sizer = table, ready, slots, shared, sizer
        self._cpu = is_cpu(device_name)
        # Set once the device has failed (read by the device thread, which then ends the engine).
        self.device_fault: BaseException | None = None

    def answer(self, launched: Launched) -> None:
        """Write a pass's outputs into its jobs' segments and answer the jobs it completes."""
        batch = launched.batch
        try:
            self._deliver(launched)
        except Exception as exc:  # a pass that failed on the device (or a bug here) fails its jobs
            if is_device_fault(exc):
                self.device_failed(batch.items, exc)
                return
            log.error("Forward pass failed for %d inputs: %s", len(batch.items), exc, exc_info=True)
            self.fail(batch.items, ErrorCode.FORWARD_FAILED, "the model failed on this batch")

    def device_failed(self, items: list[Item], exc: BaseException) -> None:
        """The device failed on the pass of ``items``: its jobs get a 503 (retry elsewhere or later)."""
        log.critical("The device failed on a pass of %d inputs; the engine ends: %s", len(items), exc)
        self.device_fault = self.device_fault or exc
        self.fail(items, ErrorCode.GONE, DEVICE_FAULT_MESSAGE)

    def fail(self, items: list[Item], code: ErrorCode, message: str) -> None:
        """Fail the jobs of ``items``."""
        seqs = {item.job_seq for item in items}
        with self._ready:
            self._table.unqueue(seqs)
            failed = [active for seq in seqs if (active := self._table.get(seq)) is not None]
        self._fail(failed, code, message)

    def fail_all(self, message: str) -> None:
        """Fail every job still held (the engine stops): a 503, to be retried."""
        with self._ready:
            left = self._table.all()
        self._fail(left, ErrorCode.GONE, message)

    def learn(self, launched: Launched) -> None:
        """A bulk pass's times, for the sizing of the next ones (after its outputs arrived)."""
        # On a GPU the steps are only queued: their host times are not the device's, and the
        # average step (the pass's device time) stands for them.
        longest = longest_step(launched.step_seconds, launched.steps_per_layer) if self._cpu else 0.0
        self._sizer.observe(len(launched.batch.ids), launched.steps, launched.seconds(), longest,
                            launched.step_tokens)
        self._shared.set_sizing(self._sizer.tokens_per_second() or 0.0, self._sizer.budget())

    def _deliver(self, launched: Launched) -> None:
        batch, out = launched.batch, launched.outputs.wait()
        if batch.lane == Lane.BULK:
            self.learn(launched)
        touched: dict[int, ActiveJob] = {}
        for item, (dense, sparse, colbert, logit) in zip(batch.items, per_item(batch, out), strict=True):
            active = self._table.get(item.job_seq)
            if active is None:
                continue  # failed meanwhile
            active.write(item.index, dense if active.wants(Kind.DENSE) else None,
                         sparse if active.wants(Kind.SPARSE) else None, colbert, logit)
            touched[active.seq] = active
        self._shared.add_stats(_pass_stats(launched, len(touched)))
        self._answer_done([a for a in touched.values() if a.remaining == 0])

    def _fail(self, actives: list[ActiveJob], code: ErrorCode, message: str) -> None:
        # Counted before answered, here and in _answer_done: a client that reads /stats after
        # its answer finds its request in them.
        self._shared.add_stats(EngineStats(failed_requests=len(actives)))
        for active in actives:
            self._forget(active)
            self._send(active.job.slot, Failed(active.job.job_id, code, message))

    def _answer_done(self, actives: list[ActiveJob]) -> None:
        by_slot: dict[int, list[int]] = {}
        now = time.monotonic()
        for active in actives:
            began = active.began or now
            active.segment.arrays["times"][:] = (began - active.arrived, now - began)  # for Server-Timing
            self._forget(active)
            by_slot.setdefault(active.job.slot, []).append(active.job.job_id)
        self._shared.add_stats(_answered(actives, now))
        for slot, job_ids in by_slot.items():
            # One message per slot and batch; chunks keep each write atomic.
            for start in range(0, len(job_ids), _DONE_CHUNK):
                self._send(slot, Done(tuple(job_ids[start : start + _DONE_CHUNK])))

    def _forget(self, active: ActiveJob) -> None:
        with self._ready:
            self._table.forget(active)
        active.segment.close()  # outside the lock: the device thread may be waiting for it

    def _send(self, slot: int, message: Done | Failed) -> None:
        try:
            self._slots[slot].send_bytes(protocol.encode(message))
        except (BlockingIOError, BrokenPipeError):
            log.warning("Dropped an answer to web worker slot %d: it is not reading", slot)


def _pass_stats(launched: Launched, jobs: int) -> EngineStats:
    """The counts of a pass that ran ``jobs``' inputs, the cross-encoder's counted apart too."""
    batch, seconds = launched.batch, launched.seconds()
    rerank = has_kind(batch.kinds, Kind.RERANK)
    return EngineStats(batches=1, batched_requests=jobs, batched_inputs=len(batch.items), tokens=len(batch.ids),
                       processing_seconds=seconds, rerank_batches=int(rerank),
                       rerank_inputs=len(batch.items) if rerank else 0, rerank_tokens=len(batch.ids) if rerank else 0,
                       rerank_processing_seconds=seconds if rerank else 0.0)


def _answered(actives: list[ActiveJob], now: float) -> EngineStats:
    """The counts of jobs answered at ``now``: per lane, their waits and latencies summed."""
    interactive = [a for a in actives if a.job.lane == Lane.INTERACTIVE]
    bulk = [a for a in actives if a.job.lane == Lane.BULK]
    return EngineStats(
        processed_requests=len(actives),
        interactive_requests=len(interactive),
        interactive_wait_seconds=sum((a.began or now) - a.arrived for a in interactive),
        interactive_latency_seconds=sum(now - a.arrived for a in interactive),
        bulk_requests=len(bulk),
        bulk_wait_seconds=sum((a.began or now) - a.arrived for a in bulk),
        bulk_latency_seconds=sum(now - a.arrived for a in bulk),
        rerank_requests=sum(a.wants(Kind.RERANK) for a in actives),
    )


class AnswerThread:
    """On a GPU: runs the answer tasks one at a time, in order, beside the device thread."""

    def __init__(self, depth: int = 1) -> None:
        self._room = threading.Semaphore(depth)
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="engine-answers", daemon=True)
        self._thread.start()

    def submit(self, task: Task) -> None:
        """Queue ``task``, once fewer than ``depth`` are waiting or running."""
        self._room.acquire()
        self._tasks.put(task)

    def close(self) -> None:
        """Run the tasks queued so far, then stop."""
        self._tasks.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                run_guarded(task)
            finally:
                self._room.release()


class LaneAnswers:
    """An answer thread per lane. A bulk pass of all three kinds writes tens of MB of ColBERT
    rows into fresh shared memory (about 30 ms of page faults for 32k tokens); behind it in one
    thread, a query run between that pass's successor's steps waited for its answer, and the
    device thread, handing the query's answer over, waited with it."""

    def __init__(self) -> None:
        self._threads = {lane: AnswerThread() for lane in Lane}

    def submit(self, lane: Lane, task: Task) -> None:
        self._threads[lane].submit(task)

    def close(self) -> None:
        for thread in self._threads.values():
            thread.close()


def run_guarded(task: Task) -> None:
    try:
        task()
    except Exception:  # a task fails its own jobs; this keeps every later answer coming
        log.exception("An answer task failed")
