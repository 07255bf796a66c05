"""kill -9 of the engine: requests in flight are answered 503 at once, the engine
comes back by itself, and nothing is left behind (real gunicorn, engine, HTTP)."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from testkit import procs
from testkit.server import Server
from tests.e2e.conftest import dense, dense_vectors, post, serving

TEXTS = [f"crash test sentence number {i} about {word}" for i, word in
         enumerate(["rivers", "mountains", "cities", "forests", "deserts", "oceans", "islands", "valleys"] * 3)]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """Its own server: every test here kills its engine."""
    with serving(tiny_model, tmp_path_factory.mktemp("crash")) as server:
        yield server


@pytest.fixture(scope="module")
def tracker(server) -> procs.ShmTracker:
    return procs.ShmTracker(server)


@pytest.fixture(scope="module")
def reference(server) -> dict[str, list[float]]:
    return dense_vectors(server, TEXTS, return_colbert=False)


def ask(server: Server, text: str, timeout: float = 30) -> requests.Response:
    return post(server, "/v1/embeddings", {"input": text, "return_colbert": False}, timeout=timeout)


def health_until_ok(server: Server, timeout: float = 60) -> list[str]:
    """The /health statuses seen once the engine is noticed gone, repeats merged, until it says ok."""
    procs.wait_for(lambda: requests.get(f"{server.url}/health", timeout=5).status_code == 503, 5,
                   what="/health to notice the engine is gone")
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(f"{server.url}/health", timeout=5)
        status = response.json()["status"]
        assert (response.status_code == 200) == (status == "ok"), response.text
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "ok":
            return seen
        time.sleep(0.02)
    raise AssertionError(f"not healthy again within {timeout} s: {seen}")


def test_requests_in_flight_get_503_within_2_s_and_the_engine_comes_back(server, auth, reference, tracker):
    restarts = procs.engine_restarts(server, auth)
    engine = procs.engine_pid(server)
    tracker.snapshot()
    os.kill(engine, signal.SIGSTOP)  # the requests below stay in flight, deterministically
    with ThreadPoolExecutor(8) as pool:
        in_flight = [pool.submit(ask, server, text) for text in TEXTS[:8]]
        procs.wait_for(lambda: procs.queue_size(server, auth) == 8, 10, what="8 requests queued")
        killed = time.monotonic()
        os.kill(engine, signal.SIGKILL)
        answers = [(f.result(), time.monotonic() - killed) for f in in_flight]
    for response, after in answers:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "unavailable_error"
        assert response.headers["Retry-After"] == "1"
        assert after < 2.0, f"answered {after:.2f} s after the kill"

    assert health_until_ok(server) == ["unavailable", "loading", "ok"]
    assert procs.engine_pid(server) != engine
    assert procs.engine_restarts(server, auth) == restarts + 1
    assert not procs.zombies(server)
    assert not procs.leaked_segments(server)
    for text in TEXTS:  # the new engine computes the same vectors
        np.testing.assert_allclose(dense(ask(server, text)), reference[text], atol=1e-5)


@pytest.mark.slow
def test_kill_under_load_never_hangs_a_request(server, auth, reference, tracker):
    """Clients keep sending while the engine is killed, while it restarts, and after."""
    results: list[tuple[float, float, int, str]] = []  # started, ended, status, text
    lock, stop = threading.Lock(), threading.Event()

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            text = TEXTS[i % len(TEXTS)]
            started = time.monotonic()
            response = ask(server, text, timeout=15)
            if response.status_code == 200:
                np.testing.assert_allclose(dense(response), reference[text], atol=1e-5)
            with lock:
                results.append((started, time.monotonic(), response.status_code, text))
            i += 1

    restarts = procs.engine_restarts(server, auth)
    with ThreadPoolExecutor(12) as pool:
        clients = [pool.submit(client, k) for k in range(12)]
        time.sleep(1.0)
        engine = procs.engine_pid(server)
        tracker.snapshot()
        killed = time.monotonic()
        os.kill(engine, signal.SIGKILL)
        health_until_ok(server)
        time.sleep(1.0)  # and serving again
        stop.set()
        for c in clients:
            c.result()  # re-raises a client's failed check

    statuses = {status for _, _, status, _ in results}
    assert statuses == {200, 503}, statuses
    in_flight = [ended - killed for started, ended, _, _ in results if started < killed < ended]
    assert all(after < 2.0 for after in in_flight), in_flight
    assert max(ended - started for started, ended, _, _ in results) < 5.0
    assert any(status == 200 and started > killed for started, _, status, _ in results)
    assert procs.engine_restarts(server, auth) == restarts + 1
    procs.wait_for(lambda: not procs.zombies(server), 2, what="the killed engine to be reaped")
    assert not procs.leaked_segments(server)


def test_kill_while_loading_backs_off_and_recovers(server, auth, reference, tracker):
    restarts = procs.engine_restarts(server, auth)
    first = procs.engine_pid(server)
    tracker.snapshot()
    os.kill(first, signal.SIGKILL)
    second = procs.wait_for(lambda: next((p.pid for p in procs.children(server.process.pid)
                                          if "spawn_main" in p.cmdline and p.pid != first and p.state != "Z"),
                                         None), 10, what="a new engine process")
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 503
    tracker.snapshot()
    os.kill(second, signal.SIGKILL)  # before it has loaded the model
    assert health_until_ok(server)[-1] == "ok"
    assert procs.engine_restarts(server, auth) == restarts + 2
    assert "restarting in 1.0 s" in server.log(), "a crash while loading backs off longer"
    np.testing.assert_allclose(dense(ask(server, TEXTS[0])), reference[TEXTS[0]], atol=1e-5)


def test_after_all_that_shutdown_leaves_no_process_and_no_shared_memory(server, tracker):
    tracker.snapshot()
    assert server.stop() == 0, server.log()
    tracker.assert_left_nothing()
