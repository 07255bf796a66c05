"""The engine's job table (gpu_pool/engine/jobs.py): queuing, taking, cancelling and expiring
jobs, and the queue gauges and dropped count it keeps in shared memory; and how those figures
are kept there (gpu_pool/wire/shared.py: counters added, gauges set)."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any, cast

import pytest

from gpu_pool.engine.choosing import Item
from gpu_pool.engine.jobs import ActiveJob, JobTable
from gpu_pool.wire.packing import Packing
from gpu_pool.wire.protocol import Job, Kind, Lane
from gpu_pool.wire.segment import Segment
from gpu_pool.wire.shared import EngineShared, EngineStats


class FakeSegment:
    closed = False

    def close(self) -> None:
        self.closed = True


def job(seq: int, *lengths: int, lane: Lane = Lane.BULK, deadline: float = float("inf")) -> ActiveJob:
    wire = Job(1000 + seq, 0, f"segment-{seq}", len(lengths), sum(lengths), Kind.DENSE, lane=lane, deadline=deadline)
    return ActiveJob(wire, seq, cast(Segment, FakeSegment()), Packing(lengths))


@pytest.fixture
def shared() -> EngineShared:
    return EngineShared(multiprocessing.get_context("spawn"), 1)


def closed(active: ActiveJob) -> bool:
    return cast(Any, active.segment).closed


def test_jobs_queue_by_lane_and_a_batch_takes_its_items_out(shared):
    table = JobTable(shared)
    query, bulk = job(1, 4, lane=Lane.INTERACTIVE), job(2, 5, 3)
    table.add([query, bulk])
    assert table.queued[Lane.INTERACTIVE] == [Item(1, 0, 4)]
    assert (shared.read_stats().interactive_queue, shared.read_stats().bulk_queue) == (1, 1)
    assert table.take(Lane.BULK, max_jobs=8, max_tokens=1000) == [Item(2, 0, 5), Item(2, 1, 3)]
    assert table.queued[Lane.BULK] == []
    assert shared.read_stats().bulk_queue == 0
    assert table.by_job_id(1002) is bulk, "a taken job is still held until it is answered"


def test_a_cancelled_job_that_never_began_is_dropped_and_counted(shared):
    table = JobTable(shared)
    first, second = job(1, 5), job(2, 5)
    table.add([first, second])
    table.mark_began(table.take(Lane.BULK, max_jobs=1, max_tokens=1000), time.monotonic())
    assert first.began is not None and second.began is None  # the oldest job went first
    table.drop([second])
    assert table.get(2) is None and closed(second)
    assert table.get(1) is first and not closed(first)
    assert table.queued[Lane.BULK] == []
    assert shared.read_stats().dropped_requests == 1


def test_only_jobs_past_their_deadline_and_not_begun_expire(shared):
    table = JobTable(shared)
    past = time.monotonic() - 1
    expired, begun, alive = job(1, 5, deadline=past), job(2, 5, deadline=past), job(3, 5)
    table.add([expired, begun, alive])
    table.mark_began([Item(2, 0, 5)], time.monotonic())
    table.drop_expired()
    assert table.get(1) is None and closed(expired)
    assert table.get(2) is begun and table.get(3) is alive
    assert [item.job_seq for item in table.queued[Lane.BULK]] == [2, 3]
    assert table.held([Item(1, 0, 5), Item(3, 0, 5)]) == [Item(3, 0, 5)]


def test_expiry_can_be_limited_to_a_batch_s_jobs(shared):
    table = JobTable(shared)
    past = time.monotonic() - 1
    first, second = job(1, 5, deadline=past), job(2, 5, deadline=past)
    table.add([first, second])
    table.drop_expired({2})
    assert table.get(1) is first and table.get(2) is None


def test_forgetting_a_job_leaves_its_segment_to_the_caller(shared):
    table = JobTable(shared)
    active = job(1, 5)
    table.add([active])
    table.forget(active)
    assert table.get(1) is None and table.by_job_id(1001) is None
    assert not closed(active)


def test_counters_add_up_and_gauges_are_set(shared):
    shared.add_stats(EngineStats(batches=2, tokens=100, bulk_queue=5))
    shared.add_stats(EngineStats(batches=1, processing_seconds=0.25))
    shared.set_queues(interactive=1, bulk=4)
    shared.set_queues(interactive=0, bulk=3)
    shared.set_sizing(tokens_per_second=1500.0, bulk_pass_tokens=2048)
    stats = shared.read_stats()
    assert (stats.batches, stats.tokens, stats.processing_seconds) == (3, 100, 0.25)
    assert (stats.interactive_queue, stats.bulk_queue) == (0, 3), "a counter's record never adds to a gauge"
    assert (stats.tokens_per_second, stats.bulk_pass_tokens) == (1500.0, 2048)
    assert isinstance(stats.batches, int) and stats.as_dict()["batches"] == 3.0
