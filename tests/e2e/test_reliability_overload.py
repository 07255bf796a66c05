"""Backpressure, timeouts and failing forward passes, on real gunicorn, a real engine and HTTP.

The engine is made slow or faulty on purpose in two ways: SIGSTOP (requests pile
up exactly as they would behind a busy device), and the engine's fault hook
(``ENGINE_FAULT_*``: a batch holding a marker token raises, or sleeps first).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from tokenizers import Tokenizer

from testkit import procs
from testkit.server import Server
from tests.e2e.conftest import TOKEN

QUEUE = 4
TIMEOUT_S = 3.0
SLOW_MS = 4500
COLOURS = ["red", "green", "blue", "cyan", "magenta", "yellow"]
TEXTS = [f"overload test sentence {i}: {w}" for i, w in enumerate(COLOURS)]


@dataclass(frozen=True)
class Markers:
    """Single characters whose token makes the engine's forward pass misbehave."""

    error: str = "☃"
    oom: str = "Ω"
    slow: str = "€"

    def token_ids(self, tokenizer: Tokenizer) -> dict[str, int]:
        ids = {}
        for name in ("error", "oom", "slow"):
            pieces = [i for i in tokenizer.encode(getattr(self, name)).ids if i > 3]  # no specials
            ids[name] = pieces[-1]
            assert ids[name] not in tokenizer.encode(" ".join(TEXTS)).ids
        assert len(set(ids.values())) == 3, ids
        return ids


@pytest.fixture(scope="module")
def markers() -> Markers:
    return Markers()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory, markers):
    ids = markers.token_ids(Tokenizer.from_file(str(tiny_model / "tokenizer.json")))
    env = procs.with_faults({
        "API_TOKEN": TOKEN, "MAX_QUEUE_SIZE": str(QUEUE), "REQUEST_TIMEOUT_S": str(TIMEOUT_S),
        "ENGINE_FAULT_ERROR_TOKEN": str(ids["error"]), "ENGINE_FAULT_OOM_TOKEN": str(ids["oom"]),
        "ENGINE_FAULT_SLOW_TOKEN": str(ids["slow"]), "ENGINE_FAULT_SLOW_MS": str(SLOW_MS),
    })
    server = Server(tiny_model, tmp_path_factory.mktemp("overload") / "server.log", **env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(server) -> dict[str, list[float]]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    return {text: dense(post(server, auth, {"input": text})) for text in TEXTS}


def post(server: Server, auth: dict[str, str], body: dict) -> requests.Response:
    return requests.post(f"{server.url}/v1/embeddings", json={"return_colbert": False, **body}, headers=auth,
                         timeout=30)


def dense(response: requests.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["dense_embedding"]


def assert_error(response: requests.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["type"] == error_type and body["detail"] == body["error"]["message"]
    for leak in ("Traceback", 'File "', ".py", "/work", "injected"):
        assert leak not in response.text
    return body


def assert_serves_normally(server: Server, auth: dict[str, str], reference: dict[str, list[float]]) -> None:
    with ThreadPoolExecutor(QUEUE) as pool:  # as many at once as the queue holds: none refused
        answers = list(pool.map(lambda t: (t, post(server, auth, {"input": t})), TEXTS))
    for text, response in answers:
        np.testing.assert_allclose(dense(response), reference[text], atol=1e-5)


def test_a_full_queue_refuses_one_more_request_at_once(server, auth, reference):
    engine = procs.engine_pid(server)
    with ThreadPoolExecutor(QUEUE) as pool:
        with procs.paused(engine):
            waiting = [pool.submit(post, server, auth, {"input": t}) for t in TEXTS[:QUEUE]]
            procs.wait_for(lambda: procs.queue_size(server, auth) == QUEUE, 5, what="a full queue")
            started = time.monotonic()
            refused = post(server, auth, {"input": "one too many"})
            elapsed = time.monotonic() - started
            refused_too = post(server, auth, {"input": ["a list", "is no exception"]})
        answers = [f.result() for f in waiting]
    body = assert_error(refused, 503, "overloaded_error")
    assert "waiting" in body["detail"]
    assert refused.headers["Retry-After"] == "1"
    assert elapsed < 0.5, f"refused after {elapsed:.2f} s, not at once"
    assert_error(refused_too, 503, "overloaded_error")
    for text, response in zip(TEXTS, answers, strict=False):
        np.testing.assert_allclose(dense(response), reference[text], atol=1e-5)
    assert procs.queue_size(server, auth) == 0
    assert_serves_normally(server, auth, reference)


def test_an_unanswered_request_gets_504_and_its_memory_is_released(server, auth, reference):
    engine = procs.engine_pid(server)
    kept = set(procs.segments(server))  # the workers' free segments
    with procs.paused(engine):
        started = time.monotonic()
        late = post(server, auth, {"input": "nobody answers this one"})
        elapsed = time.monotonic() - started
        assert_error(late, 504, "timeout_error")
        assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.5
        assert set(procs.segments(server)) <= kept, "the timed-out request's segment is removed at once"
        assert procs.queue_size(server, auth) == 0
    # The engine wakes up to a job whose memory is gone: it skips it, and the
    # next requests get their own vectors.
    assert_serves_normally(server, auth, reference)
    assert procs.engine_pid(server) == engine


def test_a_late_result_is_dropped_and_its_memory_freed(server, auth, reference, markers):
    engine = procs.engine_pid(server)
    late = post(server, auth, {"input": f"{markers.slow} this batch is slow"})
    assert_error(late, 504, "timeout_error")
    assert not procs.leaked_segments(server)
    assert procs.deleted_mappings(engine), "the name is gone while the engine still computes"
    # The slow batch ends: the engine lets go of the memory, and its answer,
    # which no request waits for any more, must reach no other request.
    procs.wait_for(lambda: not procs.deleted_mappings(engine), SLOW_MS / 1000 + 5, what="the engine to unmap it")
    assert_serves_normally(server, auth, reference)
    assert not procs.leaked_segments(server)


def test_a_failing_forward_pass_fails_its_requests_and_the_engine_goes_on(server, auth, reference, markers):
    engine = procs.engine_pid(server)
    before = requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()["batching"]["failed_requests"]
    failed = post(server, auth, {"input": ["a fine input", f"{markers.error} and one that breaks the pass"]})
    body = assert_error(failed, 500, "server_error")
    assert body["detail"] == "the model failed on this request"
    out_of_memory = post(server, auth, {"input": f"{markers.oom} needs more memory than there is"})
    body = assert_error(out_of_memory, 503, "unavailable_error")
    assert "out of memory" in body["detail"]

    assert procs.engine_pid(server) == engine, "the engine was not restarted"
    assert procs.engine_restarts(server, auth) == 0
    assert_serves_normally(server, auth, reference)
    after = requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()["batching"]["failed_requests"]
    assert after - before == 2
    assert server.log().count("Forward pass failed") == 2
    assert not procs.leaked_segments(server)


def test_shutdown_leaves_no_process_and_no_shared_memory(server):
    tracker = procs.ShmTracker(server)
    tracker.snapshot()
    assert server.stop() == 0, server.log()
    tracker.assert_left_nothing()
