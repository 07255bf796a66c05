"""Two CPU engines behind one client: load is spread, and one dying leaves the other serving."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gpu_pool.client import EngineClient
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
