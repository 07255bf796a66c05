"""Two CPU engines behind one client: load is spread, and one dying leaves the other serving.
One engine whose device fails: its request gets a 503 and the pool starts it again."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gpu_pool.client import EngineClient, EngineUnavailable
from gpu_pool.pool import EnginePool
from gpu_pool.wire.protocol import Kind
from gpu_pool.wire.shared import EngineState
from testkit.engines import engine_spec, wait_ready


@pytest.fixture(scope="module")
def two_engines(tiny_model):
    pool = EnginePool([engine_spec(tiny_model, index=0), engine_spec(tiny_model, index=1)], n_slots=2)
    pool.start()
    wait_ready(pool)
    yield pool
    pool.stop()


def embed_one(client: EngineClient, n_tokens: int) -> np.ndarray:
    ids = [np.array([0, *range(5, 5 + n_tokens), 2], dtype=np.int32)]
    with client.embed(ids, Kind.DENSE, np.array([0, 1, 2, 3], dtype=np.int32)) as result:
        return result.dense(0).copy()


@pytest.mark.slow  # seconds of its own: in make test, not test-fast
def test_load_is_spread_and_a_dead_engine_leaves_the_other_serving(two_engines):
    client = EngineClient(two_engines, two_engines.take_slot(), max_queue_size=50, timeout_s=30)
    reference = embed_one(client, 40)
    with ThreadPoolExecutor(8) as executor:
        results = list(executor.map(lambda _: embed_one(client, 40), range(64)))
    for result in results:
        np.testing.assert_allclose(result, reference, atol=1e-5)
    served = [e.stats.processed_requests for e in client.snapshot()]
    assert all(n > 0 for n in served), f"both engines took work: {served}"

    victim = two_engines.engines[0]
    victim.process.kill()
    deadline = time.monotonic() + 5
    while victim.shared.state.value == EngineState.READY and time.monotonic() < deadline:
        time.sleep(0.01)
    assert victim.shared.state.value != EngineState.READY
    for _ in range(10):  # the survivor answers everything meanwhile
        np.testing.assert_allclose(embed_one(client, 40), reference, atol=1e-5)
    wait_ready(two_engines, timeout=60)
    assert victim.shared.restarts.value == 1
    np.testing.assert_allclose(embed_one(client, 40), reference, atol=1e-5)


ROOT = Path(__file__).resolve().parents[2]
DEVICE_FAULT_TOKEN = 99  # a pass holding it fails as a GPU does (testkit/engine_faults)


@pytest.mark.slow  # two engine starts
def test_a_device_fault_fails_its_request_with_a_503_and_the_pool_starts_the_engine_again(tiny_model, monkeypatch):
    # Spawned engines (the restarted one too) take these from the environment at their start.
    monkeypatch.setenv("ENGINE_FAULT_DEVICE_TOKEN", str(DEVICE_FAULT_TOKEN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(ROOT / "testkit" / "engine_faults"), os.environ.get("PYTHONPATH")])))
    pool = EnginePool([engine_spec(tiny_model)], n_slots=1)
    pool.start()
    try:
        wait_ready(pool)
        client = EngineClient(pool, pool.take_slot(), max_queue_size=50, timeout_s=30)
        reference = embed_one(client, 40)
        faulty = [np.array([0, 5, DEVICE_FAULT_TOKEN, 2], dtype=np.int32)]
        with pytest.raises(EngineUnavailable, match="device failed"), \
                client.embed(faulty, Kind.DENSE, np.array([0, 1, 2, 3], dtype=np.int32)):
            pass
        engine = pool.engines[0]
        deadline = time.monotonic() + 30
        while engine.shared.restarts.value == 0:
            assert time.monotonic() < deadline, "the engine went on after its device failed"
            time.sleep(0.02)
        wait_ready(pool, timeout=60)
        np.testing.assert_allclose(embed_one(client, 40), reference, atol=1e-5)
    finally:
        pool.stop()
