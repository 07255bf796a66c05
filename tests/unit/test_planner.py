"""The engine's planner thread (gpu_pool/engine/planner.py): the queries that arrive while an
interactive batch waits for the device join it, as long as all of them fit."""

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
def planner() -> Iterator[Callable[[int, int], tuple[JobTable, Handoff]]]:
    """``planner(batch_size, max_batch_tokens)``: a running planner's job table and handoff (no device
    thread takes its batches)."""
    started: list[tuple[Handoff, threading.Thread]] = []

    def start(batch_size: int, max_batch_tokens: int) -> tuple[JobTable, Handoff]:
        table, handoff = JobTable(EngineShared(multiprocessing.get_context("spawn"), 1)), Handoff()
        sizer = PassSizer(0.05, max_batch_tokens)
        thread = threading.Thread(target=Planner(spec(batch_size, max_batch_tokens), table, handoff, sizer).run,
                                  daemon=True)
        thread.start()
        started.append((handoff, thread))
        return table, handoff

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


def add(table: JobTable, handoff: Handoff, *actives: ActiveJob) -> None:
    with handoff.ready:
        table.add(actives)
        handoff.ready.notify_all()


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
    table, handoff = planner(8, 100)
    add(table, handoff, query(1, 5))
    assert prepared(table, handoff, [[1]]) == [[1]]
    add(table, handoff, query(2, 7))
    add(table, handoff, query(3, 6))
    assert prepared(table, handoff, [[1, 2, 3]]) == [[1, 2, 3]], "one pass for the three"
    with handoff.ready:
        batch = handoff.interactive[0]
        assert [item.length for item in batch.items] == [7, 6, 5], "longest first"
        assert batch.ids.tolist() == [2] * 7 + [3] * 6 + [1] * 5
        assert table.queued[Lane.INTERACTIVE] == []


def test_queries_that_would_overfill_the_waiting_batch_wait_for_the_next(planner):
    table, handoff = planner(2, 100)
    add(table, handoff, query(1, 5))
    prepared(table, handoff, [[1]])
    add(table, handoff, query(2, 5), query(3, 5))  # three jobs: more than a batch takes
    time.sleep(0.2)
    assert prepared(table, handoff, [[1]]) == [[1]]
    assert [item.job_seq for item in table.queued[Lane.INTERACTIVE]] == [2, 3]

    table, handoff = planner(8, 12)
    add(table, handoff, query(1, 5))
    prepared(table, handoff, [[1]])
    add(table, handoff, query(2, 8))  # 13 tokens: past the budget
    time.sleep(0.2)
    assert prepared(table, handoff, [[1]]) == [[1]]
    assert [item.job_seq for item in table.queued[Lane.INTERACTIVE]] == [2]


def test_a_rerank_pair_never_joins_a_batch_of_bge_m3_texts(planner):
    table, handoff = planner(8, 100)
    add(table, handoff, query(1, 5))
    prepared(table, handoff, [[1]])
    add(table, handoff, query(2, 5, Kind.RERANK))
    time.sleep(0.2)
    assert prepared(table, handoff, [[1]]) == [[1]]
    assert [item.job_seq for item in table.queued[Lane.INTERACTIVE]] == [2]


def test_a_job_dropped_while_its_batch_waited_is_left_out_when_others_join(planner):
    table, handoff = planner(8, 100)
    first = query(1, 5)
    add(table, handoff, first)
    prepared(table, handoff, [[1]])
    with handoff.ready:
        table.drop([first])  # its client left: the batch made of it keeps the item until it runs
    add(table, handoff, query(2, 5))
    assert prepared(table, handoff, [[2]]) == [[2]]
