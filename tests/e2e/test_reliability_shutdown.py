"""SIGHUP reloads the web workers under the same engine; SIGTERM drains the requests in
flight, refuses new ones, stops the engine, cleans up and exits 0."""

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

DIRECTIONS = ["north", "south", "east", "west", "up", "down", "left", "right"]
TEXTS = [f"shutdown test {i} {w}" for i, w in enumerate(DIRECTIONS)]
ENGINE_IGNORES = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """Its own server: the tests here reload and stop it."""
    with serving(tiny_model, tmp_path_factory.mktemp("shutdown")) as server:
        yield server


@pytest.fixture(scope="module")
def reference(server) -> dict[str, list[float]]:
    return dense_vectors(server, TEXTS)


def ask(server: Server, text: str, timeout: float = 60) -> requests.Response:
    return post(server, "/v1/embeddings", {"input": text}, timeout=timeout)


def test_sighup_reloads_the_workers_under_the_same_engine_and_finishes_requests_in_flight(server, auth, reference):
    engine, old = procs.engine_pid(server), procs.worker_pids(server)
    restarts = procs.engine_restarts(server, auth)
    with ThreadPoolExecutor(6) as pool:
        with procs.paused(engine):
            in_flight = [pool.submit(ask, server, text) for text in TEXTS[:6]]
            procs.wait_for(lambda: procs.queue_size(server, auth) == 6, 5, what="6 requests queued")
            os.kill(server.process.pid, signal.SIGHUP)
            procs.wait_for(lambda: len(procs.worker_pids(server) - old) == 2, 15, what="2 new workers")
            assert old <= procs.worker_pids(server), "the old workers wait for their requests"
        for text, future in zip(TEXTS, in_flight, strict=False):
            np.testing.assert_allclose(dense(future.result()), reference[text], atol=1e-5)

    procs.wait_for(lambda: not procs.worker_pids(server) & old, 15, what="the old workers to exit")
    assert procs.engine_pid(server) == engine
    assert procs.engine_restarts(server, auth) == restarts
    for text in TEXTS:
        np.testing.assert_allclose(dense(ask(server, text)), reference[text], atol=1e-5)


def test_repeated_sighup_under_load_drops_no_request(server, auth, reference):
    engine = procs.engine_pid(server)
    restarts, reloads = procs.engine_restarts(server, auth), server.log().count("Hang up: Master")
    outcomes: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(k: int) -> None:
        while not stop.is_set():
            text = TEXTS[k % len(TEXTS)]
            try:
                response = ask(server, text, timeout=30)
                outcome = "ok" if response.status_code == 200 else f"status {response.status_code}"
                if outcome == "ok":
                    np.testing.assert_allclose(dense(response), reference[text], atol=1e-5)
            except requests.ConnectionError as exc:
                outcome = f"connection error: {exc}"
            with lock:
                outcomes.append(outcome)
            k += 1

    with ThreadPoolExecutor(6) as pool:
        clients = [pool.submit(client, k) for k in range(6)]
        for _ in range(3):
            time.sleep(1.2)
            os.kill(server.process.pid, signal.SIGHUP)
        time.sleep(1.5)
        stop.set()
        for c in clients:
            c.result()
    assert server.log().count("Hang up: Master") == reloads + 3
    failures = [o for o in outcomes if o != "ok"]
    assert not failures, failures[:5]
    assert len(outcomes) > 50
    assert procs.engine_pid(server) == engine
    assert procs.engine_restarts(server, auth) == restarts


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(server, auth, reference):
    engine = procs.engine_pid(server)
    tracker = procs.ShmTracker(server)
    tracker.snapshot()
    with ThreadPoolExecutor(7) as pool:
        with procs.paused(engine):
            in_flight = [pool.submit(ask, server, text) for text in TEXTS[:6]]
            procs.wait_for(lambda: procs.queue_size(server, auth) == 6, 5, what="6 requests queued")
            server.process.send_signal(signal.SIGTERM)
            procs.wait_for(lambda: "Handling signal: term" in server.log(), 5, what="the master to begin stopping")
            time.sleep(0.3)  # the workers have stopped accepting
            newcomer = pool.submit(ask, server, TEXTS[6], 15)
            time.sleep(0.5)
            assert server.process.poll() is None, "the master waits for the requests in flight"
        for text, future in zip(TEXTS, in_flight, strict=False):
            np.testing.assert_allclose(dense(future.result()), reference[text], atol=1e-5)
        with pytest.raises(requests.ConnectionError):
            newcomer.result()

    assert server.process.wait(30) == 0, server.log()
    log = server.log()
    assert "Engine 0 stopped" in log and "exited with code" not in log
    tracker.assert_left_nothing()


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_still_drains_gracefully(start_server, auth, reference):
    """systemd's default KillMode sends SIGTERM to every process of the service at
    once (a terminal's Ctrl-C does the same with SIGINT): the engine must ignore it
    and leave the stopping to the master, after the workers' requests are done."""
    server = start_server()
    engine = procs.engine_pid(server)
    assert procs.blocked_signals(engine) >= ENGINE_IGNORES
    tracker = procs.ShmTracker(server)
    tracker.snapshot()
    with ThreadPoolExecutor(4) as pool:
        with procs.paused(engine):
            in_flight = [pool.submit(ask, server, text) for text in TEXTS[:4]]
            procs.wait_for(lambda: procs.queue_size(server, auth) == 4, 5, what="4 requests queued")
            os.killpg(server.process.pid, signal.SIGTERM)
            time.sleep(0.5)
        for text, future in zip(TEXTS, in_flight, strict=False):
            np.testing.assert_allclose(dense(future.result()), reference[text], atol=1e-5)
    assert server.process.wait(30) == 0, server.log()
    log = server.log()
    assert "Engine 0 stopped" in log and "exited with code" not in log
    tracker.assert_left_nothing()
