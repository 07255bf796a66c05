"""embsvc_client without the server: decoding, batching, merging, the retry policy and the error classes
as pure functions, and the retries over real HTTP against a small scripted stub (the only way to make a
server answer a given sequence such as 503, 503, 200). tests/e2e/test_embsvc_client.py runs it against
the real server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from embsvc_client import (
    APIError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    GatewayTimeoutError,
    PayloadTooLargeError,
    RateLimitError,
    Retry,
    ServiceUnavailableError,
    plans,
)
from embsvc_client.errors import error_from, parse_retry_after
from embsvc_client.results import floats
from testkit.loopback import serve

DIM = 4


def b64(array: np.ndarray, dtype: str = "<f4") -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode()


def item(index: int, rows: int, dtype: str = "<f4") -> dict:
    """One ``data`` item in the server's base64 shape, its numbers made from ``index``."""
    dense = np.arange(DIM, dtype=np.float32) + index
    colbert = np.arange(rows * DIM, dtype=np.float32).reshape(rows, DIM) / 8 + index
    return {"object": "embedding", "index": index, "embedding": b64(dense, dtype), "dense_embedding": b64(dense, dtype),
            "sparse_embedding": {str(10 + index): 0.5, "3": 0.25}, "colbert_embedding": b64(colbert, dtype)}


def embeddings_answer(first: int, count: int, dtype: str = "<f4") -> dict:
    return {"object": "list", "data": [item(first + i, rows=first + i + 1, dtype=dtype) for i in range(count)],
            "usage": {"prompt_tokens": 3 * count, "total_tokens": 3 * count}}


# Decoding and batching ----------------------------------------------------------------------------

@pytest.mark.parametrize(("dtype", "wire"), [("float32", "<f4"), ("float16", "<f2")])
def test_base64_payloads_decode_as_little_endian_floats(dtype, wire):
    values = np.array([1.5, -2.25, 0.0, 3.0e-3], dtype=wire)
    decoded = floats(b64(values, wire), dtype)
    assert decoded.dtype == np.dtype(dtype) and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, values)
    decoded[0] = 7  # a copy the caller may change, not a view of the payload's bytes


def test_long_lists_are_split_in_order_and_a_string_is_one_text():
    assert plans.batches(list("abcdefg"), 3) == [list("abc"), list("def"), list("g")]
    assert plans.batches(["x"], 256) == [["x"]]
    assert plans.offsets([3, 3, 1]) == [0, 3, 6]
    assert plans.as_texts("one text") == ["one text"]
    with pytest.raises(ValueError, match="empty"):
        plans.batches([], 3)
    with pytest.raises(ValueError, match="batch_size"):
        plans.batches(["x"], 0)


def test_an_embed_plan_asks_for_base64_and_for_dense_when_colbert_needs_its_width():
    plan = plans.embed(["a", "b", "c"], 2, dense=False, sparse=True, colbert=True, dtype="float16",
                       max_length=64, truncate=False)
    assert plan.path == "/v1/embeddings" and plan.sizes == [2, 1]
    assert plan.bodies[0] == {"input": ["a", "b"], "return_dense": True, "return_sparse": True,
                              "return_colbert": True, "encoding_format": "base64", "embedding_dtype": "float16",
                              "max_length": 64, "truncate": False}
    assert plan.bodies[1]["input"] == ["c"]
    with pytest.raises(ValueError, match="dtype"):
        plans.embed(["a"], 2, dense=True, sparse=False, colbert=False, dtype="float64",  # type: ignore[arg-type]
                    max_length=None, truncate=True)


@pytest.mark.parametrize(("dtype", "wire"), [("float32", "<f4"), ("float16", "<f2")])
def test_batch_answers_join_into_one_result_in_input_order(dtype, wire):
    plan = plans.embed([f"t{i}" for i in range(5)], 2, dense=True, sparse=True, colbert=True, dtype=dtype,
                       max_length=None, truncate=True)
    answers = [embeddings_answer(0, 2, wire), embeddings_answer(2, 2, wire), embeddings_answer(4, 1, wire)]
    result = plan.finish(answers)
    assert len(result) == 5 and result.prompt_tokens == 15
    assert result.dense is not None and result.dense.shape == (5, DIM) and result.dense.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result.dense[:, 0], [0, 1, 2, 3, 4])
    assert result.sparse is not None and result.sparse[4] == {14: 0.5, 3: 0.25}
    assert result.colbert is not None
    assert [c.shape for c in result.colbert] == [(rows, DIM) for rows in range(1, 6)]
    np.testing.assert_array_equal(result.colbert[3][:, 0], np.arange(4) * DIM / 8 + 3)


def test_kinds_not_asked_for_are_none_also_when_dense_came_for_colbert_width():
    plan = plans.embed(["a", "b"], 8, dense=False, sparse=False, colbert=True, dtype="float32",
                       max_length=None, truncate=True)
    result = plan.finish([embeddings_answer(0, 2)])
    assert result.dense is None and result.sparse is None
    assert result.colbert is not None and [c.shape for c in result.colbert] == [(1, DIM), (2, DIM)]
    assert len(result) == 2


def test_rerank_merges_batches_best_first_ties_in_input_order_and_cuts_top_n():
    documents = ["d0", "d1", "d2", "d3", "d4"]
    plan = plans.rerank("q", documents, 2, top_n=3, mode="dense", weights=[1, 0, 0], max_length=None,
                        truncate=True)
    assert plan.path == "/v1/rerank" and "top_n" not in plan.bodies[0]  # each batch ranks all its documents
    assert plan.bodies[0] == {"query": "q", "documents": ["d0", "d1"], "mode": "dense", "weights": [1, 0, 0],
                              "truncate": True}
    answers = [{"results": [{"index": 1, "relevance_score": 0.5}, {"index": 0, "relevance_score": 0.1}]},
               {"results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.5}]},
               {"results": [{"index": 0, "relevance_score": 0.2}]}]
    ranked = plan.finish(answers)
    assert [(r.index, r.score, r.document) for r in ranked] == [(3, 0.9, "d3"), (1, 0.5, "d1"), (2, 0.5, "d2")]
    with pytest.raises(ValueError, match="top_n"):
        plans.rerank("q", documents, 2, top_n=0, mode="dense", weights=None, max_length=None, truncate=True)


def test_scores_and_tokens_keep_their_documents_positions_across_batches():
    plan = plans.score("q", ["a", "b", "c"], 2, weights=None, max_length=None, truncate=True)
    scores = {"dense": 0.5, "sparse": 0.1, "colbert": 0.4, "sparse+dense": 0.3, "colbert+sparse+dense": 0.35}
    result = plan.finish([{"data": [{"index": 0, **scores}, {"index": 1, **scores}]},
                          {"data": [{"index": 0, **scores, "dense": 0.9}]}])
    assert [s.index for s in result] == [0, 1, 2]
    assert (result[2].dense, result[2].sparse_dense, result[2].colbert_sparse_dense) == (0.9, 0.3, 0.35)
    tokens = {"ids": [0, 2], "tokens": ["<s>", "</s>"], "count": 2, "untruncated_count": 2, "truncated": False}
    plan = plans.tokenize(["x", "y"], 1, max_length=8, truncate=True)
    assert plan.bodies == [{"input": ["x"], "max_length": 8, "truncate": True},
                           {"input": ["y"], "max_length": 8, "truncate": True}]
    assert [t.count for t in plan.finish([{"data": [tokens]}, {"data": [tokens]}])] == [2, 2]


# Errors and the retry policy ------------------------------------------------------------------------

def response(status: int, body: object = None, headers: dict[str, str] | None = None,
             text: str | None = None) -> httpx.Response:
    content = text.encode() if text is not None else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers)


def server_error(status: int, message: str, error_type: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": None}, "detail": message}


@pytest.mark.parametrize(("status", "cls"), [(400, BadRequestError), (401, AuthenticationError),
                                             (413, PayloadTooLargeError), (429, RateLimitError),
                                             (503, ServiceUnavailableError), (504, GatewayTimeoutError),
                                             (418, APIError)])
def test_error_answers_become_typed_exceptions_with_status_and_message(status, cls):
    error = error_from(response(status, server_error(status, "input is wrong", "invalid_request_error", "input"),
                                {"X-Request-ID": "abc", "Retry-After": "2"}))
    assert type(error) is cls
    assert (error.status, error.message, error.error_type, error.param) == (status, "input is wrong",
                                                                             "invalid_request_error", "input")
    assert (error.request_id, error.retry_after) == ("abc", 2.0)
    assert str(error) == f"{status}: input is wrong"


def test_errors_in_other_shapes_keep_their_message():
    assert error_from(response(404, {"detail": "Not Found"})).message == "Not Found"
    assert error_from(response(502, text="<html>Bad Gateway</html>")).message == "<html>Bad Gateway</html>"
    assert error_from(response(422, {"error": "Input validation error", "error_type": "Validation"})).message \
        == "Input validation error"


def test_retry_after_is_read_as_seconds_or_an_http_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-1") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < parse_retry_after(later) <= 31


def refused(status: int, retry_after: float | None = None) -> APIError:
    return error_from(response(status, server_error(status, "busy", "overloaded_error"),
                               None if retry_after is None else {"Retry-After": str(retry_after)}))


def test_the_policy_honours_retry_after_and_bounds_attempts_and_time():
    policy = Retry(attempts=3, total_s=10, backoff_s=0.5, max_backoff_s=0.75)
    assert policy.wait(refused(503, 2), attempt=1, elapsed=0) == 2.0
    assert policy.wait(refused(429, 1), attempt=2, elapsed=5) == 1.0
    assert policy.wait(refused(503, 2), attempt=3, elapsed=0) is None  # the third send was the last
    assert policy.wait(refused(503, 2), attempt=1, elapsed=8.5) is None  # it would end after total_s
    assert policy.wait(refused(503, 60), attempt=1, elapsed=0) is None  # longer than the whole budget
    # No Retry-After: a doubling back-off, capped.
    assert [policy.wait(refused(503), attempt=n, elapsed=0) for n in (1, 2)] == [0.5, 0.75]
    assert policy.wait(httpx.ConnectError("refused"), attempt=1, elapsed=0) == 0.5
    assert policy.wait(httpx.ConnectTimeout("no answer to SYN"), attempt=1, elapsed=0) == 0.5


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500, 504])
def test_other_errors_are_never_retried(status):
    assert Retry().wait(refused(status, 1), attempt=1, elapsed=0) is None
    assert Retry().wait(httpx.ReadTimeout("slow"), attempt=1, elapsed=0) is None  # it may have been computed


def test_a_policy_that_cannot_send_is_refused():
    with pytest.raises(ValueError):
        Retry(attempts=0)
    with pytest.raises(ValueError):
        Client(batch_size=0)


# Retries over real HTTP, against a scripted stub --------------------------------------------------

@dataclass
class Stub:
    """A loopback HTTP server that answers each POST with the next scripted (status, headers, body)."""

    script: list[tuple[int, dict[str, str], object]]
    seen: list[tuple[float, str, dict[str, str], dict]] = field(default_factory=list)
    url: str = ""


@contextlib.contextmanager
def stub(*script: tuple[int, dict[str, str], object]) -> Iterator[Stub]:
    state = Stub(list(script))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.seen.append((time.monotonic(), self.path, dict(self.headers), body))
            status, headers, answer = state.script.pop(0)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass  # quiet: pytest shows the assertions

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    serve(server)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


BUSY = (503, {"Retry-After": "1"}, server_error(503, "the engine's queue is full", "overloaded_error"))
NOW = (503, {"Retry-After": "0"}, server_error(503, "the engine is loading", "unavailable_error"))


def test_a_503_is_sent_again_after_its_retry_after_and_the_answer_decoded():
    with stub(BUSY, (200, {}, embeddings_answer(0, 2))) as server, \
            Client(server.url, token="secret", timeout=5) as client:
        result = client.embed(["a", "b"], colbert=True)
    (first, path, headers, body), (second, *_) = server.seen
    assert second - first >= 1.0, "sent again before Retry-After"
    assert path == "/v1/embeddings" and headers["Authorization"] == "Bearer secret"
    assert body["input"] == ["a", "b"] and body["encoding_format"] == "base64"
    assert result.dense is not None and result.colbert is not None
    np.testing.assert_array_equal(result.dense[1], np.arange(DIM) + 1)


def test_an_indexer_says_bulk_in_the_priority_header():
    with stub((200, {}, embeddings_answer(0, 1))) as server, \
            Client(server.url, token="secret", timeout=5, priority="bulk") as client:
        client.embed(["a"])
    (_, _, headers, _), = server.seen
    assert headers["X-Priority"] == "bulk"
    with pytest.raises(ValueError, match="priority"):
        Client(server.url, priority="urgent")


def test_429_is_retried_and_retries_end_after_the_attempts_with_the_last_error():
    with stub((429, {"Retry-After": "0"}, {"detail": "slow down"}), NOW, NOW) as server, \
            Client(server.url, retry=Retry(attempts=3)) as client, pytest.raises(ServiceUnavailableError) as caught:
        client.tokenize("x")
    assert len(server.seen) == 3
    assert (caught.value.status, caught.value.error_type) == (503, "unavailable_error")
    assert caught.value.message == "the engine is loading" and caught.value.retry_after == 0.0


def test_a_retry_after_beyond_the_time_budget_raises_at_once():
    with stub(BUSY) as server, Client(server.url, retry=Retry(total_s=0.5)) as client:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError):
            client.embed("x")
        elapsed = time.monotonic() - started
    assert elapsed < 0.5 and len(server.seen) == 1


def test_a_bad_request_is_sent_once():
    bad = (400, {}, server_error(400, "input is empty or white space only", "invalid_request_error", "input"))
    with stub(bad) as server, Client(server.url) as client, pytest.raises(BadRequestError) as caught:
        client.score("q", [" "])
    assert len(server.seen) == 1 and caught.value.param == "input"


def test_a_refused_connection_is_retried_then_raised():
    with stub() as server:
        url = server.url  # closed on the way out: nothing listens there any more
    with Client(url, retry=Retry(attempts=3, backoff_s=0.05)) as client, pytest.raises(httpx.ConnectError):
        started = time.monotonic()
        client.embed("x")
    assert time.monotonic() - started >= 0.15  # two waits: 0.05 then 0.1


def test_the_async_client_retries_the_same_way_and_keeps_batch_order():
    async def call(url: str):
        async with AsyncClient(url, batch_size=2, concurrency=1) as client:
            return await client.embed(["a", "b", "c"], sparse=True)

    with stub(NOW, (200, {}, embeddings_answer(0, 2)), (200, {}, embeddings_answer(2, 1))) as server:
        result = asyncio.run(call(server.url))
    assert [body["input"] for *_, body in server.seen] == [["a", "b"], ["a", "b"], ["c"]]
    assert result.dense is not None and result.sparse is not None
    np.testing.assert_array_equal(result.dense[:, 0], [0, 1, 2])
    assert result.sparse[2] == {12: 0.5, 3: 0.25}


def test_a_failed_async_batch_fails_the_call():
    async def call(url: str):
        async with AsyncClient(url, batch_size=1, concurrency=1) as client:
            return await client.embed(["a", "b"])

    with stub((200, {}, embeddings_answer(0, 1)), (413, {}, server_error(413, "too many", "invalid_request_error"))) \
            as server, pytest.raises(PayloadTooLargeError):
        asyncio.run(call(server.url))
    assert len(server.seen) == 2
