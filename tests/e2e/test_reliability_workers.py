"""Web workers that are recycled (gunicorn's max_requests) or killed disturb neither
the engine nor the other workers' requests, and no reply reaches the wrong request."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from testkit import procs
from tests.e2e.conftest import embed, post, serving

WORDS = ["alpha", "beta", "gamma", "дельта", "эпсилон", "中文", "عربي", "émoji🚀", "omega", "sigma", "kappa", "lambda",
         "river", "stone"]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """Its own server: workers recycled every 25-35 requests, and a test here kills one."""
    with serving(tiny_model, tmp_path_factory.mktemp("workers"),
                 GUNICORN_CMD_ARGS="--max-requests 25 --max-requests-jitter 10") as server:
        yield server


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rng = random.Random(11)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) + f" #{i}" for i in range(120)]


@pytest.fixture(scope="module")
def alone(server, texts) -> dict[str, dict]:
    """Each text's answer when it is the only request in the server."""
    return {text: embed(server, {"input": [text]}) for text in texts}


def assert_same_answer(body: dict, reference: dict, kinds: dict[str, bool]) -> None:
    item, expected = body["data"][0], reference["data"][0]
    assert body["usage"] == reference["usage"]
    np.testing.assert_allclose(item["dense_embedding"], expected["dense_embedding"], atol=1e-5)
    if kinds.get("return_sparse", True):
        assert item["sparse_embedding"].keys() == expected["sparse_embedding"].keys()
        np.testing.assert_allclose(list(item["sparse_embedding"].values()),
                                   list(expected["sparse_embedding"].values()), atol=1e-5)
    else:
        assert item["sparse_embedding"] is None
    if kinds.get("return_colbert", True):
        np.testing.assert_allclose(item["colbert_embedding"], expected["colbert_embedding"], atol=1e-5)
    else:
        assert item["colbert_embedding"] is None


def test_many_clients_through_recycled_workers_each_get_their_own_answer(server, auth, texts, alone):
    engine, workers = procs.engine_pid(server), procs.worker_pids(server)
    recycled, restarts = server.log().count("Autorestarting worker"), procs.engine_restarts(server, auth)
    rng = random.Random(5)
    jobs = [(text, {"return_sparse": rng.random() < 0.5, "return_colbert": rng.random() < 0.5})
            for text in texts * 3]
    rng.shuffle(jobs)

    def one(job: tuple[str, dict[str, bool]]) -> None:
        text, kinds = job
        assert_same_answer(embed(server, {"input": [text], **kinds}), alone[text], kinds)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, jobs))

    assert server.log().count("Autorestarting worker") - recycled >= 6, "max_requests recycled the workers"
    assert not procs.worker_pids(server) & workers
    # A worker leaving must not try to join the engine, which is the master's child.
    assert "can only join a child process" not in server.log()
    assert procs.engine_pid(server) == engine
    assert procs.engine_restarts(server, auth) == restarts
    assert not procs.leaked_segments(server)


def wait_for_answers(server, served: Callable[[], int], count: int) -> None:
    """Until ``served()`` reaches ``count``: counted to a number of answers rather than over a
    fixed time, so that a slow or paused machine (workers recycle every 25-35 requests here, and
    boot again) does not fail it; a server that stopped serving still does, after 20 s."""
    try:
        procs.wait_for(lambda: served() >= count, 20, interval=0.05, what=f"{count} answers")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the server's log ends:\n{server.log()[-4000:]}") from None


def test_a_killed_worker_disturbs_no_other_request(server, auth, texts, alone):
    engine, restarts = procs.engine_pid(server), procs.engine_restarts(server, auth)
    outcomes: list[tuple[float, str]] = []  # (started, "ok" or the error)
    lock, stop = threading.Lock(), threading.Event()

    def client(offset: int) -> None:
        for i in range(offset, 10**6, 7):
            if stop.is_set():
                return
            text = texts[i % len(texts)]
            started = time.monotonic()
            try:
                response = post(server, "/v1/embeddings", {"input": [text]}, timeout=30)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                # The victim's own connections: cut before or in the middle of the answer.
                outcome = "connection error"
            else:
                outcome = "ok" if response.status_code == 200 else f"status {response.status_code}"
                if outcome == "ok":
                    assert_same_answer(response.json(), alone[text], {})
            with lock:
                outcomes.append((started, outcome))

    def served_after(moment: float) -> int:
        with lock:
            return sum(1 for started, outcome in outcomes if outcome == "ok" and started > moment)

    with ThreadPoolExecutor(12) as pool:
        clients = [pool.submit(client, k) for k in range(12)]
        time.sleep(1.5)
        victim = max(procs.worker_pids(server))
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        try:
            wait_for_answers(server, lambda: served_after(killed + 0.5), 40)
        finally:
            stop.set()
            for c in clients:
                c.result()

    errors = [(started - killed, outcome) for started, outcome in outcomes if outcome != "ok"]
    # Only the requests the victim was serving fail, one per client at most, and only its own.
    assert all(outcome == "connection error" and after < 0.5 for after, outcome in errors), errors
    assert len(errors) <= 12
    assert procs.engine_pid(server) == engine
    assert procs.engine_restarts(server, auth) == restarts
    procs.wait_for(lambda: len(procs.worker_pids(server)) == 2, 10, what="a replacement worker")
    assert victim not in procs.worker_pids(server)
    procs.wait_for(lambda: not procs.segments(server, victim), 5, what="the killed worker's segments removed")
    for text in texts[:20]:
        assert_same_answer(embed(server, {"input": [text]}), alone[text], {})


def test_shutdown_leaves_no_process_and_no_shared_memory(server):
    tracker = procs.ShmTracker(server)
    tracker.snapshot()
    assert server.stop() == 0, server.log()
    tracker.assert_left_nothing()
