"""The planner: chooses each lane's next batch and packs it while the device runs the current
one; and ``Handoff``, what the engine's threads tell each other."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from gpu_pool.engine.choosing import Item
from gpu_pool.engine.jobs import JobTable
from gpu_pool.engine.lanes import PassSizer
from gpu_pool.engine.packed import Batch, pack
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.wire.protocol import Lane

POLL_S = 0.25


@dataclass
class Handoff:
    """The state the threads share, read and written under ``lock`` (with the ``JobTable``): the
    reader says that the engine stops, the planner hands over its batches and says when it has
    finished, the device thread says when a bulk batch is done.

    Two conditions over the one lock, so that each change wakes only the thread it concerns (a
    thread woken for nothing costs two context switches and a turn of the GIL: with one condition
    for all, every job read woke the waiting device thread, every batch taken the planner):
    ``ready``, the planner thread's (bulk jobs queued, room for a bulk batch, stopping), and
    ``prepared``, the device thread's (a batch prepared, the planner done). ``with handoff.ready``
    takes the lock."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    ready: threading.Condition = field(init=False)
    prepared: threading.Condition = field(init=False)
    interactive: deque[Batch] = field(default_factory=deque)  # at most one prepared interactive batch
    bulk: deque[Batch] = field(default_factory=deque)  # prepared bulk batches
    bulk_in_progress: int = 0  # bulk batches prepared or running: at most ``concurrency``
    stopping: bool = False
    planner_done: bool = False  # stopping, and every queued item is in a batch

    def __post_init__(self) -> None:
        self.ready, self.prepared = threading.Condition(self.lock), threading.Condition(self.lock)


def batch_of(table: JobTable, items: list[Item], lane: Lane) -> Batch:
    """The items packed for a pass (under ``ready``, so that no job is forgotten in the middle of the copy)."""
    actives = [table[item.job_seq] for item in items]
    return pack(items, [active.ids(item.index) for item, active in zip(items, actives, strict=True)],
                [active.job.kinds for active in actives], lane)


class Planner:
    """An interactive batch is made at once (one waits at a time); the queries that arrive while
    it waits for the device join it as long as all of them fit, the rest gather into the next.
    It is made on the thread that changed what it depends on, under the lock (``plan_queries``):
    the reader's when queries arrive, the device thread's when it takes the prepared one; a
    query's pass then waits for no third thread to wake (the planner thread's wake-up, GIL
    included, was some 100 µs of the engine's CPU a pass of one query on a CPU).

    The planner thread (``run``) makes the bulk batches: one at once for an idle device; while
    the device is busy it keeps filling until it is full (``batch_size`` jobs or its token
    budget, sized by time: ``lanes.PassSizer``) or its oldest job has waited
    ``batch_timeout_ms``. Jobs whose deadline has passed are dropped before their first pass."""

    def __init__(self, spec: EngineSpec, table: JobTable, handoff: Handoff, sizer: PassSizer) -> None:
        self._spec, self._table, self._handoff, self._sizer = spec, table, handoff, sizer

    def plan_queries(self) -> None:
        """Make the interactive batch, or let the queries that came join the one prepared (under the lock)."""
        items = self._interactive()
        if items is not None:
            self._handoff.interactive.append(batch_of(self._table, items, Lane.INTERACTIVE))
            self._handoff.prepared.notify()

    def batch_taken(self, lane: Lane) -> None:
        """The device thread took a prepared batch of ``lane`` (under the lock): the queries that
        waited for room make the next. (A bulk batch taken still counts as in progress.)"""
        if lane == Lane.INTERACTIVE:
            self.plan_queries()

    def run(self) -> None:
        """The planner thread: bulk batches, until stopping with nothing left."""
        handoff = self._handoff
        while True:
            with handoff.ready:
                items = self._gather_bulk()
                if items is None:
                    handoff.planner_done = True
                    handoff.prepared.notify()
                    return
                handoff.bulk.append(batch_of(self._table, items, Lane.BULK))
                handoff.bulk_in_progress += 1
                handoff.prepared.notify()

    def _interactive(self) -> list[Item] | None:
        """The next interactive batch's items, if one may be made now."""
        handoff, queued = self._handoff, self._table.queued[Lane.INTERACTIVE]
        if not queued:
            return None
        if not handoff.interactive:
            return self._table.take(Lane.INTERACTIVE, self._spec.batch_size, self._spec.max_batch_tokens)
        if self._joins(handoff.interactive[-1]):
            # The prepared batch has not begun: the queries that came since join it. A pass of a
            # few short texts costs the host about what a pass of one costs.
            prepared = handoff.interactive.pop()
            joined = self._table.held(prepared.items) + self._table.take(
                Lane.INTERACTIVE, self._spec.batch_size, self._spec.max_batch_tokens)
            return sorted(joined, key=lambda item: -item.length)
        return None

    def _gather_bulk(self) -> list[Item] | None:
        """The next bulk batch's items, once it may be made; None when stopping with nothing left."""
        handoff, queued = self._handoff, self._table.queued
        while True:
            self._table.drop_expired()
            self.plan_queries()  # queries waiting for room are never stranded, however it came
            wait_s = POLL_S
            if queued[Lane.BULK] and handoff.bulk_in_progress < self._spec.concurrency:
                wait_s = self._fill_time_left()
                if wait_s <= 0:
                    return self._table.take(Lane.BULK, self._spec.batch_size, self._sizer.budget())
            elif handoff.stopping and not any(queued.values()):
                return None
            handoff.ready.wait(min(wait_s, POLL_S))

    def _joins(self, prepared: Batch) -> bool:
        """Whether every queued query fits into ``prepared``, the interactive batch waiting for the
        device: the same model, at most ``batch_size`` jobs and ``max_batch_tokens`` tokens in all."""
        queued = self._table.queued[Lane.INTERACTIVE]
        model = prepared.items[0].rerank
        jobs = {item.job_seq for item in prepared.items} | {item.job_seq for item in queued}
        return (all(item.rerank == model for item in queued) and len(jobs) <= self._spec.batch_size
                and len(prepared.ids) + sum(item.length for item in queued) <= self._spec.max_batch_tokens)

    def _fill_time_left(self) -> float:
        """How much longer the next bulk batch may keep filling; 0 or less: make it now."""
        if self._handoff.bulk_in_progress == 0 or self._handoff.stopping:
            return 0.0  # an idle device never waits
        # The next batch takes the items of the oldest one's model only (``choosing``): the others do not fill it.
        lane = self._table.queued[Lane.BULK]
        queued = [item for item in lane if item.rerank == lane[0].rerank]
        jobs = {item.job_seq for item in queued}
        if len(jobs) >= self._spec.batch_size or sum(i.length for i in queued) >= self._sizer.budget():
            return 0.0
        return self._table.oldest_arrival(Lane.BULK) + self._spec.batch_timeout_ms / 1000 - time.monotonic()
