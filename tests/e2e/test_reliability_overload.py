"""Backpressure, timeouts and failing forward passes, on real gunicorn, a real engine and HTTP.

The engine is made slow or faulty on purpose in two ways: SIGSTOP (requests pile
up exactly as they would behind a busy device), and the engine's fault hook
(``ENGINE_FAULT_*``: a batch holding a marker token raises, or sleeps first).
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from tokenizers import Tokenizer

from testkit import procs
from testkit.server import Server
from tests.e2e.conftest import TOKEN, assert_error, dense, dense_vectors, post, serving

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
    """MAX_QUEUE_SIZE bulk requests fill the queue: one more bulk request is refused at once;
    a query still gets in (the room kept for the interactive lane), and then no more."""
    engine = procs.engine_pid(server)
    with ThreadPoolExecutor(QUEUE + 1) as pool:
        with procs.paused(engine):
            waiting = [pool.submit(ask, server, {"input": t, "priority": "bulk"}) for t in TEXTS[:QUEUE]]
            procs.wait_for(lambda: procs.queue_size(server, auth) == QUEUE, 5, what="a full queue")
            started = time.monotonic()
            one_more = ask(server, {"input": "one too many", "priority": "bulk"})
            elapsed = time.monotonic() - started
            refused_too = ask(server, {"input": ["a list", "is no exception"], "priority": "bulk"})
            query = pool.submit(ask, server, {"input": TEXTS[QUEUE]})
            procs.wait_for(lambda: procs.queue_size(server, auth) == QUEUE + 1, 5, what="the query queued")
            no_room_left = ask(server, {"input": "a second query"})
        answers = [f.result() for f in waiting]
    body = refused(one_more, 503, "overloaded_error")
    assert "waiting" in body["detail"]
    assert one_more.headers["Retry-After"] == "1"
    assert elapsed < 0.5, f"refused after {elapsed:.2f} s, not at once"
    refused(refused_too, 503, "overloaded_error")
    refused(no_room_left, 503, "overloaded_error")
    for text, response in zip(TEXTS, answers, strict=False):
        np.testing.assert_allclose(dense(response), reference[text], atol=1e-5)
    np.testing.assert_allclose(dense(query.result()), reference[TEXTS[QUEUE]], atol=1e-5)
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
    body = refused(out_of_memory, 413, "invalid_request_error")
    assert "needs more memory than the device has" in body["detail"] and "max_length" in body["detail"]

    assert procs.engine_pid(server) == engine, "the engine was not restarted"
    assert procs.engine_restarts(server, auth) == restarts
    assert_serves_normally(server, reference)
    after = requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()["batching"]["failed_requests"]
    assert after - before == 2
    assert server.log().count("Forward pass failed") == logged + 1
    assert not procs.leaked_segments(server)


def stats(server: Server, auth: dict[str, str]) -> dict:
    return requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()["engines"][0]


def test_a_pass_out_of_memory_is_split_and_only_the_input_that_does_not_fit_fails(server, auth, reference,
                                                                                   markers):
    """Three requests in one pass, one of them too big for the device: the pass is retried in
    halves, its two batch-mates get their vectors and only the one input is refused."""
    splits = server.log().count("retrying in two halves")
    with ThreadPoolExecutor(3) as pool, procs.paused(procs.engine_pid(server)):
        fine = [pool.submit(ask, server, {"input": text}) for text in TEXTS[:2]]
        too_big = pool.submit(ask, server, {"input": f"{markers.oom} does not fit"})
        procs.wait_for(lambda: procs.queue_size(server, auth) == 3, 5, what="3 requests queued")
    for text, future in zip(TEXTS, fine, strict=False):
        np.testing.assert_allclose(dense(future.result()), reference[text], atol=1e-5)
    refused(too_big.result(), 413, "invalid_request_error")
    assert server.log().count("retrying in two halves") > splits
    assert_serves_normally(server, reference)


def test_a_job_that_timed_out_in_the_queue_is_never_computed(server, auth, markers):
    """Behind a pass that outlasts REQUEST_TIMEOUT_S, a queued request times out: the engine
    drops it by its deadline instead of computing it for nobody (as TEI does)."""
    before = stats(server, auth)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(ask, server, {"input": f"{markers.slow} keeps the engine busy"})
        procs.wait_for(lambda: stats(server, auth)["batches"] > before["batches"] or procs.queue_size(server, auth),
                       5, what="the slow pass to begin")
        time.sleep(0.3)
        queued = pool.submit(ask, server, {"input": "queued behind it, for nobody in the end"})
        refused(slow.result(), 504, "timeout_error")
        refused(queued.result(), 504, "timeout_error")
    procs.wait_for(lambda: not procs.deleted_mappings(procs.engine_pid(server)), SLOW_MS / 1000 + 5,
                   what="the slow pass to end")
    after = stats(server, auth)
    assert after["dropped_requests"] == before["dropped_requests"] + 1
    assert after["batches"] == before["batches"] + 1, "only the slow pass ran"


def test_a_client_that_leaves_costs_the_engine_nothing(server, auth):
    """The client closes its connection while its request waits: the web worker tells the
    engine, which drops the job before its pass; the access log says 499."""
    before = stats(server, auth)
    body = b'{"input": "nobody will read this answer"}'
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with procs.paused(procs.engine_pid(server)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(head + body)
            procs.wait_for(lambda: procs.queue_size(server, auth) == 1, 5, what="the request queued")
        procs.wait_for(lambda: '"POST /v1/embeddings HTTP/1.1" 499' in server.log(), 5, what="the worker to notice")
    procs.wait_for(lambda: stats(server, auth)["dropped_requests"] == before["dropped_requests"] + 1, 5,
                   what="the engine to drop the job")
    assert stats(server, auth)["batches"] == before["batches"], "no pass for it"


def test_shutdown_leaves_no_process_and_no_shared_memory(server):
    tracker = procs.ShmTracker(server)
    tracker.snapshot()
    assert server.stop() == 0, server.log()
    tracker.assert_left_nothing()
