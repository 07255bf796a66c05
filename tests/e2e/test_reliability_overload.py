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
from tests.e2e.conftest import assert_error, dense, dense_vectors, post, serving

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
        "MAX_QUEUE_SIZE": str(QUEUE), "REQUEST_TIMEOUT_S": str(TIMEOUT_S),
        "ENGINE_FAULT_ERROR_TOKEN": str(ids["error"]), "ENGINE_FAULT_OOM_TOKEN": str(ids["oom"]),
        "ENGINE_FAULT_SLOW_TOKEN": str(ids["slow"]), "ENGINE_FAULT_SLOW_MS": str(SLOW_MS),
    })
    with serving(tiny_model, tmp_path_factory.mktemp("overload"), **env) as server:
        yield server


@pytest.fixture(scope="module")
def reference(server) -> dict[str, list[float]]:
    return dense_vectors(server, TEXTS, return_colbert=False)


def ask(server: Server, body: dict) -> requests.Response:
    return post(server, "/v1/embeddings", {"return_colbert": False, **body}, timeout=30)


def refused(response: requests.Response, status: int, error_type: str) -> dict:
    """An error that tells nothing of the server's insides (nor of the injected fault)."""
    body = assert_error(response, status, error_type)
    for leak in ("Traceback", 'File "', ".py", "/work", "injected"):
        assert leak not in response.text
    return body


def assert_serves_normally(server: Server, reference: dict[str, list[float]]) -> None:
    with ThreadPoolExecutor(QUEUE) as pool:  # as many at once as the queue holds: none refused
        answers = list(pool.map(lambda t: (t, ask(server, {"input": t})), TEXTS))
    for text, response in answers:
        np.testing.assert_allclose(dense(response), reference[text], atol=1e-5)


def test_a_full_queue_refuses_one_more_request_at_once(server, auth, reference):
    engine = procs.engine_pid(server)
    with ThreadPoolExecutor(QUEUE) as pool:
        with procs.paused(engine):
            waiting = [pool.submit(ask, server, {"input": t}) for t in TEXTS[:QUEUE]]
            procs.wait_for(lambda: procs.queue_size(server, auth) == QUEUE, 5, what="a full queue")
            started = time.monotonic()
            one_more = ask(server, {"input": "one too many"})
            elapsed = time.monotonic() - started
            refused_too = ask(server, {"input": ["a list", "is no exception"]})
        answers = [f.result() for f in waiting]
    body = refused(one_more, 503, "overloaded_error")
    assert "waiting" in body["detail"]
    assert one_more.headers["Retry-After"] == "1"
    assert elapsed < 0.5, f"refused after {elapsed:.2f} s, not at once"
    refused(refused_too, 503, "overloaded_error")
    for text, response in zip(TEXTS, answers, strict=False):
        np.testing.assert_allclose(dense(response), reference[text], atol=1e-5)
    assert procs.queue_size(server, auth) == 0
    assert_serves_normally(server, reference)


def test_an_unanswered_request_gets_504_and_its_memory_is_released(server, auth, reference):
    engine = procs.engine_pid(server)
    kept = set(procs.segments(server))  # the workers' free segments
    with procs.paused(engine):
        started = time.monotonic()
        late = ask(server, {"input": "nobody answers this one"})
        elapsed = time.monotonic() - started
        refused(late, 504, "timeout_error")
        assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.5
        assert set(procs.segments(server)) <= kept, "the timed-out request's segment is removed at once"
        assert procs.queue_size(server, auth) == 0
    # The engine wakes up to a job whose memory is gone: it skips it, and the
    # next requests get their own vectors.
    assert_serves_normally(server, reference)
    assert procs.engine_pid(server) == engine


def test_a_late_result_is_dropped_and_its_memory_freed(server, auth, reference, markers):
    engine = procs.engine_pid(server)
    late = ask(server, {"input": f"{markers.slow} this batch is slow"})
    refused(late, 504, "timeout_error")
    assert not procs.leaked_segments(server)
    assert procs.deleted_mappings(engine), "the name is gone while the engine still computes"
    # The slow batch ends: the engine lets go of the memory, and its answer,
    # which no request waits for any more, must reach no other request.
    procs.wait_for(lambda: not procs.deleted_mappings(engine), SLOW_MS / 1000 + 5, what="the engine to unmap it")
    assert_serves_normally(server, reference)
    assert not procs.leaked_segments(server)


def test_a_failing_forward_pass_fails_its_requests_and_the_engine_goes_on(server, auth, reference, markers):
    engine = procs.engine_pid(server)
    restarts, logged = procs.engine_restarts(server, auth), server.log().count("Forward pass failed")
    before = requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()["batching"]["failed_requests"]
    failed = ask(server, {"input": ["a fine input", f"{markers.error} and one that breaks the pass"]})
    body = refused(failed, 500, "server_error")
    assert body["detail"] == "the model failed on this request"
    out_of_memory = ask(server, {"input": f"{markers.oom} needs more memory than there is"})
    body = refused(out_of_memory, 503, "unavailable_error")
    assert "out of memory" in body["detail"]

    assert procs.engine_pid(server) == engine, "the engine was not restarted"
    assert procs.engine_restarts(server, auth) == restarts
    assert_serves_normally(server, reference)
    after = requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()["batching"]["failed_requests"]
    assert after - before == 2
    assert server.log().count("Forward pass failed") == logged + 2
    assert not procs.leaked_segments(server)


def test_shutdown_leaves_no_process_and_no_shared_memory(server):
    tracker = procs.ShmTracker(server)
    tracker.snapshot()
    assert server.stop() == 0, server.log()
    tracker.assert_left_nothing()
