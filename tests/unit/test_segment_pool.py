"""Reused segments: a worker's free list and the engine's kept mappings."""

from __future__ import annotations

import os

import pytest

from gpu_pool.wire import segment, segment_pool
from gpu_pool.wire.protocol import Kind
from gpu_pool.wire.segment import Layout
from gpu_pool.wire.segment_pool import POOLED_BYTES, EngineMappings, WorkerSegments

SMALL = Layout(2, 10, 8, Kind.DENSE | Kind.SPARSE)
OTHER = Layout(1, 3, 8, Kind.DENSE | Kind.COLBERT)
LARGE = Layout(1, POOLED_BYTES // 4, 8, Kind.SPARSE)  # more than POOLED_BYTES


@pytest.fixture
def worker():
    segments = WorkerSegments(f"bgem3-test-{os.getpid()}-pool-")
    yield segments
    segment.unlink_prefix(segments.prefix)


def exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


def test_a_finished_segment_serves_the_next_request_with_that_requests_layout(worker):
    first = worker.take(SMALL)
    name = first.name
    first.close()
    assert exists(name), "kept for the next request"
    second = worker.take(OTHER)
    assert second.name == name
    assert second.layout == OTHER and set(second.arrays) == {"lengths", "ids", "times", "dense", "colbert"}
    assert second.arrays["colbert"].shape == (2, 8)
    second.close()


def test_a_discarded_segment_is_removed_and_never_handed_out_again(worker):
    first = worker.take(SMALL)
    first.discard()
    assert not exists(first.name)
    assert worker.take(SMALL).name != first.name


def test_a_large_request_gets_a_segment_of_its_own(worker):
    large = worker.take(LARGE)
    assert os.path.getsize(f"/dev/shm/{large.name}") == LARGE.size() > POOLED_BYTES
    large.close()
    assert not exists(large.name)


def test_the_free_list_is_bounded(worker):
    taken = [worker.take(SMALL) for _ in range(segment_pool.WORKER_KEEPS + 3)]
    for each in taken:
        each.close()
    assert sum(exists(s.name) for s in taken) == segment_pool.WORKER_KEEPS


def test_the_engine_keeps_its_mapping_of_a_pooled_segment(worker):
    engine = EngineMappings()
    owner = worker.take(SMALL)
    seen = engine.attach(owner.name, SMALL)
    seen.arrays["dense"][1] = 3.0
    seen.close()
    assert (owner.arrays["dense"][1] == 3.0).all()
    owner.close()
    again = worker.take(OTHER)
    later = engine.attach(again.name, OTHER)
    assert later._map is seen._map, "the same mapping, not a new one"
    later.arrays["dense"][0] = 5.0
    assert (again.arrays["dense"][0] == 5.0).all()


def test_the_engine_maps_a_large_segment_for_one_job_only(worker):
    engine = EngineMappings()
    owner = worker.take(LARGE)
    first, second = engine.attach(owner.name, LARGE), engine.attach(owner.name, LARGE)
    assert first._map is not second._map
    first.close(), second.close(), owner.close()
    with pytest.raises(FileNotFoundError):
        engine.attach(owner.name, LARGE)
