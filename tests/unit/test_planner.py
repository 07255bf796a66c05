"""The engine's planner (gpu_pool/engine/planner.py): the queries that arrive while an
interactive batch waits for the device join it, as long as all of them fit; a query's batch is
made on the thread that queued it, without the planner thread."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import numpy as np
import pytest

from gpu_pool.engine.jobs import ActiveJob, JobTable
from gpu_pool.engine.lanes import PassSizer
from gpu_pool.engine.planner import Handoff, Planner
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.wire.packing import Packing
from gpu_pool.wire.protocol import Job, Kind, Lane
from gpu_pool.wire.segment import Segment
from gpu_pool.wire.shared import EngineShared


class IdsSegment:
    def __init__(self, ids: np.ndarray) -> None:
        self.arrays = {"ids": ids}

    def close(self) -> None:
        pass


def query(seq: int, length: int, kinds: Kind = Kind.DENSE) -> ActiveJob:
    wire = Job(1000 + seq, 0, f"segment-{seq}", 1, length, kinds, lane=Lane.INTERACTIVE)
    ids = np.full(length, seq, dtype=np.int32)
    return ActiveJob(wire, seq, cast(Segment, IdsSegment(ids)), Packing([length]))


def spec(batch_size: int, max_batch_tokens: int) -> EngineSpec:
    return EngineSpec(index=0, device="cpu", dtype="float32", model_path="", batch_size=batch_size,
                      max_batch_tokens=max_batch_tokens, batch_timeout_ms=5, concurrency=2,
                      interactive_max_wait_ms=50, bulk_share=0.5, threads=1, log_level="INFO", log_format="text")


@pytest.fixture
def planner() -> Iterator[Callable[[int, int], tuple[JobTable, Handoff, Planner]]]:
    """``planner(batch_size, max_batch_tokens)``: a running planner's job table, handoff and planner
    (no device thread takes its batches)."""
    started: list[tuple[Handoff, threading.Thread]] = []

    def start(batch_size: int, max_batch_tokens: int) -> tuple[JobTable, Handoff, Planner]:
        table, handoff, plans = unstarted(batch_size, max_batch_tokens)
        thread = threading.Thread(target=plans.run, daemon=True)
        thread.start()
        started.append((handoff, thread))
        return table, handoff, plans

    yield start
    for handoff, thread in started:
        deadline = time.monotonic() + 5
        while thread.is_alive() and time.monotonic() < deadline:
            with handoff.ready:  # taken as a device thread takes them: the planner hands over the rest and ends
                handoff.stopping = True
                handoff.interactive.clear()
                handoff.bulk.clear()
                handoff.bulk_in_progress = 0
                handoff.ready.notify_all()
            thread.join(0.05)
        assert not thread.is_alive(), "the planner did not end once stopping"


def unstarted(batch_size: int, max_batch_tokens: int) -> tuple[JobTable, Handoff, Planner]:
    """A planner whose thread does not run (it makes bulk batches only)."""
    table, handoff = JobTable(EngineShared(multiprocessing.get_context("spawn"), 1)), Handoff()
    return table, handoff, Planner(spec(batch_size, max_batch_tokens), table, handoff,
                                   PassSizer(0.05, max_batch_tokens))


def add(table: JobTable, handoff: Handoff, plans: Planner, *actives: ActiveJob) -> None:
    """As the reader queues jobs."""
    with handoff.ready:
        table.add(actives)
        plans.plan_queries()


def prepared(table: JobTable, handoff: Handoff, expected: list[list[int]]) -> list[list[int]]:
    """Each prepared interactive batch's job seqs, once they are ``expected`` (or after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        with handoff.ready:
            batches = [sorted(item.job_seq for item in batch.items) for batch in handoff.interactive]
        if batches == expected or time.monotonic() > deadline:
            return batches
        time.sleep(0.01)


def test_queries_arriving_while_a_batch_waits_join_it(planner):
    table, handoff, plans = planner(8, 100)
    add(table, handoff, plans, query(1, 5))
    assert prepared(table, handoff, [[1]]) == [[1]]
    add(table, handoff, plans, query(2, 7))
    add(table, handoff, plans, query(3, 6))
    assert prepared(table, handoff, [[1, 2, 3]]) == [[1, 2, 3]], "one pass for the three"
    with handoff.ready:
        batch = handoff.interactive[0]
        assert [item.length for item in batch.items] == [7, 6, 5], "longest first"
        assert batch.ids.tolist() == [2] * 7 + [3] * 6 + [1] * 5
        assert table.queued[Lane.INTERACTIVE] == []


def test_queries_that_would_overfill_the_waiting_batch_wait_for_the_next(planner):
    table, handoff, plans = planner(2, 100)
    add(table, handoff, plans, query(1, 5))
    prepared(table, handoff, [[1]])
    add(table, handoff, plans, query(2, 5), query(3, 5))  # three jobs: more than a batch takes
    time.sleep(0.2)
    assert prepared(table, handoff, [[1]]) == [[1]]
    assert [item.job_seq for item in table.queued[Lane.INTERACTIVE]] == [2, 3]

    table, handoff, plans = planner(8, 12)
    add(table, handoff, plans, query(1, 5))
    prepared(table, handoff, [[1]])
    add(table, handoff, plans, query(2, 8))  # 13 tokens: past the budget
    time.sleep(0.2)
    assert prepared(table, handoff, [[1]]) == [[1]]
    assert [item.job_seq for item in table.queued[Lane.INTERACTIVE]] == [2]


def test_a_rerank_pair_never_joins_a_batch_of_bge_m3_texts(planner):
    table, handoff, plans = planner(8, 100)
    add(table, handoff, plans, query(1, 5))
    prepared(table, handoff, [[1]])
    add(table, handoff, plans, query(2, 5, Kind.RERANK))
    time.sleep(0.2)
    assert prepared(table, handoff, [[1]]) == [[1]]
    assert [item.job_seq for item in table.queued[Lane.INTERACTIVE]] == [2]


def test_a_job_dropped_while_its_batch_waited_is_left_out_when_others_join(planner):
    table, handoff, plans = planner(8, 100)
    first = query(1, 5)
    add(table, handoff, plans, first)
    prepared(table, handoff, [[1]])
    with handoff.ready:
        table.drop([first])  # its client left: the batch made of it keeps the item until it runs
    add(table, handoff, plans, query(2, 5))
    assert prepared(table, handoff, [[2]]) == [[2]]


def test_a_query_batch_is_made_on_the_thread_that_queued_it():
    table, handoff, plans = unstarted(8, 100)
    add(table, handoff, plans, query(1, 5))
    assert [[item.job_seq for item in batch.items] for batch in handoff.interactive] == [[1]], \
        "made at once, with no planner thread running"


def test_taking_the_prepared_batch_makes_the_next_of_the_queries_that_waited():
    table, handoff, plans = unstarted(2, 100)
    add(table, handoff, plans, query(1, 5))
    add(table, handoff, plans, query(2, 5), query(3, 5))  # three jobs: more than a batch takes
    assert len(handoff.interactive) == 1
    with handoff.ready:  # as the device thread takes a batch
        taken = handoff.interactive.popleft()
        plans.batch_taken(Lane.INTERACTIVE)
    assert [item.job_seq for item in taken.items] == [1]
    assert [sorted(item.job_seq for item in batch.items) for batch in handoff.interactive] == [[2, 3]]
    assert table.queued[Lane.INTERACTIVE] == []
