"""The device thread (the engine process's main thread): runs the model on the batches the
planner prepared, a step at a time. Between the steps of a bulk pass it runs a waiting
interactive batch whole (``lanes.may_interleave``). A pass that runs out of memory is split in
two and retried, down to the one input that does not fit. It hands each pass to the
``Answerer`` through its lane's answer thread on a GPU; on a CPU it runs the answering itself,
between passes (``Inline``, below)."""

from __future__ import annotations

import logging
import time

import numpy as np

from gpu_pool.devices import is_cpu
from gpu_pool.engine.answers import (
    DEVICE_FAULT_MESSAGE,
    Answerer,
    DeviceFault,
    LaneAnswers,
    Launched,
    Task,
    is_device_fault,
    is_out_of_memory,
    run_guarded,
)
from gpu_pool.engine.choosing import Item
from gpu_pool.engine.jobs import JobTable
from gpu_pool.engine.lanes import PassSizer, may_interleave, next_lane
from gpu_pool.engine.packed import Batch, pack
from gpu_pool.engine.planner import POLL_S, Handoff, Planner, batch_of
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.model.port import Model, RunningPass
from gpu_pool.wire.protocol import ErrorCode, Kind, Lane
from gpu_pool.wire.shared import EngineShared, EngineStats

log = logging.getLogger("gpu_pool.engine")

_ANY_TOKEN = 5  # an ordinary token id (0-3 are XLM-R's specials): warm-up passes need no real text


class Inline:
    """On a CPU the passes use every core, so an answer beside the next pass would only take
    cores from it (the mixed load of bench/priority.py gave 0.94 of its tokens/s with the
    answer thread; six alternating turns, bench/ab.py): the device thread answers each pass
    itself, between passes. Each task runs at once, on the thread that submits it."""

    def submit(self, lane: Lane, task: Task) -> None:
        run_guarded(task)

    def close(self) -> None:
        pass


def for_device(device_name: str) -> LaneAnswers | Inline:
    """Where the answering runs: beside the device thread on a GPU, on it on a CPU."""
    if is_cpu(device_name):
        return Inline()
    return LaneAnswers()  # cuda-only


class DeviceThread:
    def __init__(self, spec: EngineSpec, model: Model, table: JobTable, handoff: Handoff, planner: Planner,
                 sizer: PassSizer, answerer: Answerer, shared: EngineShared) -> None:
        self._spec, self._model, self._table, self._handoff, self._planner = spec, model, table, handoff, planner
        self._sizer, self._answerer, self._shared = sizer, answerer, shared
        self._answers = for_device(model.device_name)
        self._last_lane: Lane | None = None

    def warm_up(self, tokens: int = 256) -> None:
        """Two passes of all three kinds before the first request: the first pays for allocations
        and kernel choices (each head's too), so only the second teaches the pass sizer the
        device's rate. Then one pass of the cross-encoder where one is loaded, for its own first time."""
        ids = np.full(tokens, _ANY_TOKEN, dtype=np.int32)
        batch = pack([Item(0, 0, tokens)], [ids], [Kind.DENSE | Kind.SPARSE | Kind.COLBERT])
        for learns in (False, True):
            launched = self._launch(batch)
            launched.outputs.wait()
            if learns:
                self._answerer.learn(launched)
        if self._model.reranks:
            self._launch(pack([Item(0, 0, tokens, rerank=True)], [ids], [Kind.RERANK])).outputs.wait()

    def run(self) -> None:
        """Until the planner has finished: each prepared batch in turn; then the answers of the last
        passes. Raises ``DeviceFault`` once the device has failed, every job held failed (503)."""
        try:
            while (batch := self._next_batch()) is not None:
                self._run(batch)
                self._last_lane = batch.lane
                if batch.lane == Lane.BULK:
                    with self._handoff.ready:
                        self._handoff.bulk_in_progress -= 1
                        self._handoff.ready.notify()
        except DeviceFault:
            self._answers.close()  # the earlier passes' answers first (those on the device fail too)
            self._answerer.fail_all(DEVICE_FAULT_MESSAGE)
            raise
        self._answers.close()

    def _next_batch(self) -> Batch | None:
        handoff = self._handoff
        with handoff.ready:
            while True:
                self._raise_if_faulted()
                lane = next_lane(bool(handoff.interactive), bool(handoff.bulk), self._last_lane)
                if lane is not None:
                    batch = (handoff.interactive if lane == Lane.INTERACTIVE else handoff.bulk).popleft()
                    self._planner.batch_taken(lane)
                    return batch
                if handoff.planner_done:
                    return None  # stopping, and nothing left prepared
                handoff.prepared.wait(POLL_S)

    def _raise_if_faulted(self) -> None:
        """The answer thread found the device failed (on a pass's outputs): the engine ends."""
        if self._answerer.device_fault is not None:
            raise DeviceFault(str(self._answerer.device_fault))

    def _run(self, prepared: Batch) -> None:
        self._raise_if_faulted()
        batch = self._still_wanted(prepared)
        if batch is None:
            return
        with self._handoff.ready:
            self._table.mark_began(batch.items, time.monotonic())
        try:
            launched = self._launch(batch)
        except DeviceFault:
            raise  # from a query run between this pass's steps: the engine ends
        except Exception as exc:  # noqa: BLE001 - a failed pass fails its jobs, the engine goes on
            out_of_memory = is_out_of_memory(exc)
            halves = self._failed_pass(batch, exc, out_of_memory)
        else:
            self._answers.submit(batch.lane, lambda: self._answerer.answer(launched))
            return
        # Out of the handler, the failed pass is gone: the exception held it (its traceback's
        # frames, with their tensors) until now; only now can the device's cache be given back.
        if out_of_memory:
            self._model.release_memory()
        for half in halves:
            self._run(half)

    def _still_wanted(self, batch: Batch) -> Batch | None:
        """The batch without the jobs dropped, or expired, while it waited (None: nothing left)."""
        with self._handoff.ready:
            self._table.drop_expired({item.job_seq for item in batch.items})
            return self._repacked(batch, batch.items)

    def _repacked(self, batch: Batch, items: list[Item]) -> Batch | None:
        """A batch of those of ``items`` whose job is still held (under ``ready``; None: none is)."""
        held = self._table.held(items)
        if held == batch.items:
            return batch
        return batch_of(self._table, held, batch.lane) if held else None

    def _launch(self, batch: Batch) -> Launched:
        """The pass; a bulk one a step at a time, with waiting queries run between its steps."""
        bulk = batch.lane == Lane.BULK
        # A bulk pass of one long text keeps its steps to the budget's rows; queries run whole.
        step_tokens = self._sizer.budget() if bulk else None
        # A query while bulk work is under way runs on one thread (on a CPU): the bulk requests'
        # web side keeps the cores busy, and a pass on two threads waits at each of its ~200
        # barriers for a partner the scheduler preempted (bench.contended, beside one busy
        # process: slowest of 25 query passes 285-413 ms on two threads, 66 ms on one).
        running = self._model.start(batch.ids, batch.lengths, batch.kinds, batch.colbert_texts, step_tokens,
                                    one_thread=not bulk and self._handoff.bulk_in_progress > 0)
        if bulk:
            step_seconds, interleaved = self._steps(running)
        else:
            # Nothing runs between an interactive pass's steps: in a row, without the loop's
            # bookkeeping (a GPU's small pass is bound by its host time).
            running.finish()
            step_seconds, interleaved = [], 0.0
        return Launched(batch, running.outputs_async(), running.steps, running.steps_per_layer, running.step_tokens,
                        step_seconds, interleaved)

    def _steps(self, running: RunningPass) -> tuple[list[float], float]:
        """A bulk pass's steps, with a waiting interactive batch run between two: each step's own
        time (the interleaved passes left out), and the seconds the interactive batches took."""
        step_seconds: list[float] = []
        began, interleaved = time.perf_counter(), 0.0
        while True:
            step_began = time.perf_counter()
            last = running.step()
            step_seconds.append(time.perf_counter() - step_began)
            if not last:  # on a GPU, at most a layer queued: a query arriving waits behind that, not the pass
                running.keep_ahead(running.steps_per_layer)
            # After the last step too: a query goes before the pass's heads and its answer.
            if self._handoff.interactive:  # a deque's truth is safe to read unlocked
                # On a GPU the steps queued so far finish first: the query then queues behind
                # none of them, and the clock below measures the device, not the queueing.
                running.sync()
                interleaved += self._interleave(running, time.perf_counter() - began - interleaved, interleaved)
            if last:
                return step_seconds, interleaved

    def _interleave(self, running: RunningPass, bulk_s: float, interactive_s: float) -> float:
        """Run the waiting interactive batch now, if bulk has had its share; the time it took."""
        if not may_interleave(bulk_s, interactive_s, self._spec.bulk_share):
            return 0.0
        with self._handoff.ready:
            if not self._handoff.interactive:
                return 0.0
            batch = self._handoff.interactive.popleft()
            self._planner.batch_taken(Lane.INTERACTIVE)
        began = time.perf_counter()
        self._run(batch)
        running.sync()  # on a GPU, until the query has run: the clock measures the device
        self._shared.add_stats(EngineStats(preemptions=1))
        return time.perf_counter() - began

    def _failed_pass(self, batch: Batch, exc: Exception, out_of_memory: bool) -> list[Batch]:
        """Out of memory: the batch's two halves to retry, so that only the input that does not
        fit alone fails. A device fault ends the engine; any other error fails the batch's jobs."""
        if is_device_fault(exc):
            self._answers.submit(batch.lane, lambda: self._answerer.device_failed(batch.items, exc))
            raise DeviceFault(str(exc)) from None
        if not out_of_memory:
            log.error("Forward pass failed for %d inputs: %s", len(batch.items), exc, exc_info=True)
            self._fail_later(batch, ErrorCode.FORWARD_FAILED, "the model failed on this batch")
            return []
        if len(batch.items) == 1:
            item = batch.items[0]
            log.error("Out of memory on one input of %d tokens: %s", item.length, exc)
            self._fail_later(batch, ErrorCode.OUT_OF_MEMORY,
                             f"an input of {item.length} tokens needs more memory than the device has")
            return []
        log.warning("Out of memory on %d inputs (%d tokens); retrying in two halves",
                    len(batch.items), len(batch.ids))
        half = len(batch.items) // 2
        halves = []
        for items in (batch.items[:half], batch.items[half:]):
            with self._handoff.ready:
                retry = self._repacked(batch, items)
            if retry is not None:
                halves.append(retry)
        return halves

    def _fail_later(self, batch: Batch, code: ErrorCode, message: str) -> None:
        """Fail the jobs of ``batch`` where its lane's answers run, after the answers of earlier passes."""
        self._answers.submit(batch.lane, lambda: self._answerer.fail(batch.items, code, message))
