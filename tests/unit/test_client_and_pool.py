"""The worker's client and the master's pool without an engine process: the test
plays the engine on real pipes, shared counters and segments."""

from __future__ import annotations

import itertools
import os
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from embsvc.master import hooks
from gpu_pool import client as client_module
from gpu_pool.client import EngineClient
from gpu_pool.errors import EngineOverloaded, EngineTimeout, EngineUnavailable
from gpu_pool.pool import EngineHandle, EnginePool
from gpu_pool.wire import protocol, segment
from gpu_pool.wire.frames import FrameReader
from gpu_pool.wire.protocol import Done, Job, Kind
from gpu_pool.wire.shared import EngineShared, EngineState
from testkit.engines import engine_spec

IDS = [np.array([0, 10, 11, 2], dtype=np.int32)]
UNUSED = np.array([0, 1, 2, 3], dtype=np.int32)
_prefixes = itertools.count()


class FakePool:
    """What EngineClient reads of an EnginePool: one ready engine, ``n_slots`` answer pipes."""

    def __init__(self, n_slots: int = 2) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.shm_prefix = f"bgem3-unit-{os.getpid()}-{next(_prefixes)}-"
        pipes = [ctx.Pipe(duplex=False) for _ in range(n_slots)]
        self.slot_readers = [r for r, _ in pipes]
        self.answers = [w for _, w in pipes]
        requests_in, requests_out = ctx.Pipe(duplex=False)
        shared = EngineShared(ctx, n_slots)
        shared.state.value = EngineState.READY
        shared.dim.value = 4
        self.engines = [EngineHandle(SimpleNamespace(index=0, device="cpu"), shared, requests_in, requests_out)]
        self.jobs = FrameReader(requests_in)
        self._received: list[Job] = []

    def next_job(self, timeout: float = 5.0) -> Job:
        deadline = time.monotonic() + timeout
        while not self._received and time.monotonic() < deadline:
            self._received += [protocol.decode(frame) for frame in self.jobs.read(0.05)]
        assert self._received, "no job was submitted"
        return self._received.pop(0)

    def more_jobs(self, wait_s: float) -> list[Job]:
        return self._received + [protocol.decode(frame) for frame in self.jobs.read(wait_s)]

    def answer(self, slot: int, *job_ids: int) -> None:
        self.answers[slot].send_bytes(protocol.encode(Done(job_ids)))

    def close(self) -> None:
        segment.unlink_prefix(self.shm_prefix)


@pytest.fixture
def fake_pool():
    pool = FakePool()
    yield pool
    pool.close()


def client_as(pool: FakePool, pid: int, monkeypatch: pytest.MonkeyPatch, **kwargs: float) -> EngineClient:
    """An EngineClient as built in a web worker with process id ``pid``."""
    monkeypatch.setattr(client_module.os, "getpid", lambda: pid)
    settings = {"max_queue_size": 50, "timeout_s": 5.0} | kwargs
    return EngineClient(pool, 0, int(settings["max_queue_size"]), settings["timeout_s"])


def test_a_late_answer_to_a_dead_worker_never_wakes_its_successors_request(fake_pool, monkeypatch):
    """Slot 0's first worker dies with a job in the engine; the master gives the slot
    to a new worker, and the engine's late answer reaches the new worker's pipe."""
    predecessor = FakePool()
    try:
        first = client_as(predecessor, 1000, monkeypatch, timeout_s=0.2)
        with pytest.raises(EngineTimeout):
            first.embed(IDS, Kind.DENSE, UNUSED)
        dead_job = predecessor.next_job()
    finally:
        predecessor.close()

    successor = client_as(fake_pool, 2000, monkeypatch)
    with ThreadPoolExecutor(1) as executor:
        waiting: Future = executor.submit(successor.embed, IDS, Kind.DENSE, UNUSED)
        job = fake_pool.next_job()
        assert job.job_id != dead_job.job_id
        assert job.shm_name != dead_job.shm_name
        fake_pool.answer(0, dead_job.job_id)  # the engine's late answer to the dead worker
        time.sleep(0.5)
        assert not waiting.done(), "woken by an answer to another worker's job"
        fake_pool.answer(0, job.job_id)
        with waiting.result(timeout=5) as result:
            assert result.dense(0).shape == (4,)


def test_max_queue_size_waiting_requests_refuse_the_next_at_once(fake_pool, monkeypatch):
    client = client_as(fake_pool, 3000, monkeypatch, max_queue_size=3)
    fake_pool.engines[0].shared.in_flight[1] = 1  # another web worker's request is waiting too
    with ThreadPoolExecutor(2) as executor:
        waiting = [executor.submit(client.embed, IDS, Kind.DENSE, UNUSED) for _ in range(2)]
        jobs = [fake_pool.next_job(), fake_pool.next_job()]
        assert fake_pool.engines[0].shared.requests_in_flight() == 3
        started = time.monotonic()
        with pytest.raises(EngineOverloaded):
            client.embed(IDS, Kind.DENSE, UNUSED)
        assert time.monotonic() - started < 0.1
        assert fake_pool.engines[0].shared.requests_in_flight() == 3, "a refused request takes no place"
        fake_pool.answer(0, *(j.job_id for j in jobs))
        for future in waiting:
            future.result(timeout=5).close()
    assert fake_pool.engines[0].shared.in_flight[0] == 0


def test_concurrent_requests_never_overfill_the_queue(fake_pool, monkeypatch):
    client = client_as(fake_pool, 3100, monkeypatch, max_queue_size=5)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            client.embed(IDS, Kind.DENSE, UNUSED).close()
            result = "done"
        except EngineOverloaded:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for thread in threads:
        thread.start()
    jobs = [fake_pool.next_job() for _ in range(5)]
    time.sleep(0.3)
    assert fake_pool.engines[0].shared.requests_in_flight() == 5
    fake_pool.answer(0, *(j.job_id for j in jobs))
    for thread in threads:
        thread.join(5)
    assert sorted(outcomes) == ["done"] * 5 + ["refused"] * 15
    assert not fake_pool.more_jobs(0.1), "no sixth job reached the engine"


def test_a_dead_engine_fails_its_requests_at_once(fake_pool, monkeypatch):
    client = client_as(fake_pool, 3200, monkeypatch, timeout_s=30)
    with ThreadPoolExecutor(1) as executor:
        waiting = executor.submit(client.embed, IDS, Kind.DENSE, UNUSED)
        fake_pool.next_job()
        started = time.monotonic()
        fake_pool.engines[0].shared.generation.value += 1  # what the supervisor does when it dies
        with pytest.raises(EngineUnavailable):
            waiting.result(timeout=5)
        assert time.monotonic() - started < 1.0
    assert not [n for n in os.listdir(segment.SHM_DIR) if n.startswith(fake_pool.shm_prefix)]


def test_an_engine_not_ready_is_refused_without_a_segment(fake_pool, monkeypatch):
    client = client_as(fake_pool, 3300, monkeypatch)
    fake_pool.engines[0].shared.state.value = EngineState.LOADING
    with pytest.raises(EngineUnavailable, match="loading"):
        client.embed(IDS, Kind.DENSE, UNUSED)
    fake_pool.engines[0].shared.state.value = EngineState.UNAVAILABLE
    with pytest.raises(EngineUnavailable, match="restarting"):
        client.embed(IDS, Kind.DENSE, UNUSED)
    assert fake_pool.engines[0].shared.requests_in_flight() == 0
    assert not [n for n in os.listdir(segment.SHM_DIR) if n.startswith(fake_pool.shm_prefix)]


# -- the master's side -------------------------------------------------------------


@pytest.fixture
def pool(tmp_path):
    pool = EnginePool([engine_spec(tmp_path)], n_slots=2)  # never started: no engine process
    yield pool
    segment.unlink_prefix(pool.shm_prefix)


def torn_frame() -> bytes:
    """What a reader killed between two reads leaves: the rest of a frame."""
    frame = struct.pack("!i", 40) + protocol.encode(Done((1, 2, 3)))[:40]
    return frame[6:]


def test_a_released_slot_starts_its_next_worker_on_a_whole_message(pool):
    slot = pool.take_slot()
    writer = pool.slot_writers[slot]
    writer.send_bytes(protocol.encode(Done((7,))))
    os.write(writer.fileno(), torn_frame())
    released = threading.Thread(target=pool.release_slot, args=(slot, 12345))
    released.start()
    released.join(5)
    assert not released.is_alive(), "the master hung draining the slot"
    assert slot in pool.free_slots
    writer.send_bytes(protocol.encode(Done((8,))))
    frames = FrameReader(pool.slot_readers[slot]).read(1.0)
    assert [protocol.decode(f) for f in frames] == [Done((8,))]


def test_a_dead_engines_queued_jobs_are_dropped_before_its_successor_starts(pool):
    handle = pool.engines[0]
    handle.shared.state.value = EngineState.READY
    job = Job(1, 0, "bgem3-x-1-1", 1, 4, Kind.DENSE)
    handle.requests_out.send_bytes(protocol.encode(job))
    os.write(handle.requests_out.fileno(), torn_frame())
    handle.process = SimpleNamespace(pid=1, exitcode=-9, join=lambda: None)
    delay = pool._on_death(handle)
    assert delay == 0.5
    assert handle.shared.state.value == EngineState.UNAVAILABLE
    assert handle.shared.generation.value == 1 and handle.shared.restarts.value == 1
    assert not handle.requests_in.poll(0), "the next engine must start on an empty pipe"
    handle.process = SimpleNamespace(pid=2, exitcode=1, join=lambda: None)
    assert pool._on_death(handle) == 1, "dying before it was ready backs off longer"


def test_cpu_engines_share_the_cores_whatever_their_device_names(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert hooks._cpu_threads(("cpu:0", "cpu:1")) == 4
    assert hooks._cpu_threads(("cpu", "cpu")) == 4
    assert hooks._cpu_threads(("cpu:0",)) == 0, "a lone CPU engine takes every core"
    assert hooks._cpu_threads(("cpu", "cuda:0")) == 0
