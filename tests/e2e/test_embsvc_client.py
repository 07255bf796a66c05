"""embsvc_client against the real server (gunicorn, a real engine, real HTTP): its arrays are the
numbers /v1/embeddings, /v1/score, /v1/rerank and /tokenize answer; long lists are split into
batches and joined in order; the async client gives what the sync one gives; a real full queue's
503 is waited out; errors arrive as typed exceptions."""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from embsvc_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    Embeddings,
    PayloadTooLargeError,
    Retry,
    ServiceUnavailableError,
)
from testkit import procs
from testkit.server import Server
from tests.e2e.conftest import TOKEN, embed, ok, post
from tests.e2e.readme import blocks, region, run_python

TEXTS = [
    "BGE-M3 gives dense, sparse and ColBERT vectors from one pass.",
    "Текст для векторизации",
    "北京是中国的首都。",
    "hello",
    "Hybrid retrieval adds sparse lexical weights to dense vectors. " * 4,
]
QUERY = "How does hybrid retrieval combine dense and sparse vectors?"
MODES = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")


def client_for(server: Server, **options: object) -> Client:
    return Client(server.url, token=TOKEN, timeout=60, **options)  # type: ignore[arg-type]


def f32(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def assert_same_vectors(result: Embeddings, reference: list[dict], atol: float = 0.0) -> None:
    """``result`` holds /v1/embeddings' float answer, text by text, kind by kind."""
    assert result.dense is not None and result.sparse is not None and result.colbert is not None
    assert len(result) == len(reference)
    for i, want in enumerate(reference):
        np.testing.assert_allclose(result.dense[i], f32(want["dense_embedding"]), rtol=0, atol=atol)
        np.testing.assert_allclose(result.colbert[i], f32(want["colbert_embedding"]), rtol=0, atol=atol)
        assert result.sparse[i] == pytest.approx({int(k): v for k, v in want["sparse_embedding"].items()},
                                                 rel=1e-6, abs=atol)


def test_the_clients_vectors_are_the_endpoints_numbers(server):
    reference = embed(server, {"input": TEXTS})
    with client_for(server) as client:
        result = client.embed(TEXTS, dense=True, sparse=True, colbert=True)
    assert_same_vectors(result, reference["data"])
    assert result.dense is not None and result.dense.shape == (len(TEXTS), 32) and result.dense.dtype == np.float32
    assert result.prompt_tokens == reference["usage"]["prompt_tokens"]


def test_float16_payloads_decode_to_the_float32_numbers_rounded(server):
    reference = embed(server, {"input": TEXTS[:2]})["data"]
    with client_for(server) as client:
        result = client.embed(TEXTS[:2], colbert=True, dtype="float16")
    assert result.dense is not None and result.colbert is not None and result.sparse is None
    assert result.dense.dtype == np.float16 and result.colbert[0].dtype == np.float16
    for i, want in enumerate(reference):
        np.testing.assert_array_equal(result.dense[i], f32(want["dense_embedding"]).astype(np.float16))
        np.testing.assert_array_equal(result.colbert[i], f32(want["colbert_embedding"]).astype(np.float16))


def test_one_kind_alone_and_a_single_string(server):
    reference = embed(server, {"input": TEXTS[0]})["data"][0]
    with client_for(server) as client:
        colbert = client.embed(TEXTS[0], dense=False, colbert=True)
        sparse = client.embed(TEXTS[0], dense=False, sparse=True)
    assert colbert.dense is None and colbert.sparse is None and colbert.colbert is not None
    np.testing.assert_array_equal(colbert.colbert[0], f32(reference["colbert_embedding"]))
    assert sparse.dense is None and sparse.colbert is None and len(sparse) == 1


def test_score_rerank_and_tokenize_are_the_endpoints_answers(server):
    scores = ok(post(server, "/v1/score", {"query": QUERY, "documents": TEXTS}))["data"]
    ranking = ok(post(server, "/v1/rerank", {"query": QUERY, "documents": TEXTS, "mode": "sparse+dense"}))["results"]
    tokens = ok(post(server, "/tokenize", {"input": TEXTS, "max_length": 8}))["data"]
    with client_for(server) as client:
        got_scores = client.score(QUERY, TEXTS)
        got_ranking = client.rerank(QUERY, TEXTS, mode="sparse+dense", top_n=3)
        got_tokens = client.tokenize(TEXTS, max_length=8)
    for got, want in zip(got_scores, scores, strict=True):
        assert got.index == want["index"]
        assert [got.dense, got.sparse, got.colbert, got.sparse_dense, got.colbert_sparse_dense] == [
            want[mode] for mode in MODES]
    assert [(r.index, r.score, r.document) for r in got_ranking] == [
        (r["index"], r["relevance_score"], TEXTS[r["index"]]) for r in ranking[:3]]
    assert [(t.ids, t.tokens, t.count, t.untruncated_count, t.truncated) for t in got_tokens] == [
        (t["ids"], t["tokens"], t["count"], t["untruncated_count"], t["truncated"]) for t in tokens]
    assert got_tokens[4].truncated and got_tokens[4].count == 8


@pytest.mark.slow
def test_batches_split_at_the_servers_limit_and_join_in_order(server, start_server):
    """A server that takes at most 2 inputs a request: 5 texts pass only in batches of 2, and each
    text's vectors are those the shared server gives it (same model, other batch mates)."""
    small = start_server(MAX_INPUTS="2")
    documents = [*TEXTS, "one more document", "and the last"]
    reference = embed(server, {"input": TEXTS})["data"]
    whole = ok(post(server, "/v1/rerank", {"query": QUERY, "documents": documents}))["results"]
    with client_for(small, batch_size=2) as client:
        result = client.embed(TEXTS, sparse=True, colbert=True)
        ranking = client.rerank(QUERY, documents)
        scores = client.score(QUERY, documents)
        tokens = client.tokenize(TEXTS)
    assert_same_vectors(result, reference, atol=1e-5)
    assert [r.index for r in ranking] == [r["index"] for r in whole]
    np.testing.assert_allclose([r.score for r in ranking], [r["relevance_score"] for r in whole], atol=1e-5)
    assert [s.index for s in scores] == list(range(len(documents)))
    assert [t.count for t in tokens] == [len(item["colbert_embedding"]) + 1 for item in reference]
    with client_for(small, batch_size=3) as client, pytest.raises(PayloadTooLargeError) as caught:
        client.embed(TEXTS)
    answer = post(small, "/v1/embeddings", {"input": TEXTS[:3]}).json()
    assert (caught.value.status, caught.value.param, caught.value.message) == (413, "input", answer["detail"])


def test_the_async_client_gives_what_the_sync_one_gives(server):
    async def run() -> tuple:
        async with AsyncClient(server.url, token=TOKEN, batch_size=2, concurrency=3) as client:
            return await asyncio.gather(client.embed(TEXTS, sparse=True, colbert=True),
                                        client.score(QUERY, TEXTS), client.rerank(QUERY, TEXTS, top_n=2),
                                        client.tokenize(TEXTS))

    got, scores, ranking, tokens = asyncio.run(run())
    with client_for(server) as client:
        want = client.embed(TEXTS, sparse=True, colbert=True)
        assert scores == client.score(QUERY, TEXTS)
        assert ranking == client.rerank(QUERY, TEXTS, top_n=2)
        assert tokens == client.tokenize(TEXTS)
    assert got.dense is not None and want.dense is not None
    np.testing.assert_allclose(got.dense, want.dense, rtol=0, atol=1e-5)
    assert got.sparse is not None and want.sparse is not None
    for a, b in zip(got.sparse, want.sparse, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert got.colbert is not None and want.colbert is not None
    for a, b in zip(got.colbert, want.colbert, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_errors_are_typed_with_the_servers_status_and_message(server):
    with Client(server.url, token="wrong-token") as client, pytest.raises(AuthenticationError) as caught:
        client.embed("x")
    assert caught.value.status == 401 and caught.value.error_type == "authentication_error"
    with client_for(server) as client, pytest.raises(BadRequestError) as caught:
        client.embed(["fine", "   "])
    answer = post(server, "/v1/embeddings", {"input": ["fine", "   "]}).json()
    assert (caught.value.status, caught.value.param, caught.value.message) == (400, "input", answer["detail"])
    assert caught.value.error_type == answer["error"]["type"] and caught.value.request_id


def test_the_progress_bar_is_drawn_on_a_terminal_only_when_asked(server, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for progress, drawn in ((True, True), (False, False)):
        stderr = Terminal()
        monkeypatch.setattr("sys.stderr", stderr)
        with client_for(server, batch_size=2, progress=progress) as client:
            client.embed(TEXTS)
        assert ("/v1/embeddings" in stderr.getvalue() and "5/5" in stderr.getvalue()) is drawn
    piped = io.StringIO()  # not a terminal: no bar even when asked
    monkeypatch.setattr("sys.stderr", piped)
    with client_for(server, progress=True) as client:
        client.embed(TEXTS)
    assert piped.getvalue() == ""


def refused_503s(server: Server) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "embsvc_http_requests_total" and sample.labels.get("status") == "503"
               and sample.labels.get("endpoint") == "/v1/embeddings")


@pytest.mark.slow
def test_a_full_queue_is_waited_out_after_retry_after(start_server, auth):
    """A real 503: the engine is paused with its queue full (MAX_QUEUE_SIZE=1, and the one place
    beyond it kept for queries). Without retries the client raises it; with them it waits the
    server's Retry-After and gets the vectors once the engine goes on."""
    busy = start_server(MAX_QUEUE_SIZE="1")
    reference = embed(busy, {"input": TEXTS[:2]})["data"]
    with ThreadPoolExecutor(3) as pool, client_for(busy) as patient, \
            client_for(busy, retry=Retry(attempts=1)) as impatient:
        with procs.paused(procs.engine_pid(busy)):
            holders = [pool.submit(post, busy, "/v1/embeddings", {"input": f"holds the queue {i}"}) for i in range(2)]
            procs.wait_for(lambda: procs.queue_size(busy, auth) == 2, 5, what="a full queue")
            with pytest.raises(ServiceUnavailableError) as caught:
                impatient.embed(TEXTS[:2])
            started = time.monotonic()
            waiting = pool.submit(patient.embed, TEXTS[:2], sparse=True, colbert=True)
            procs.wait_for(lambda: refused_503s(busy) >= 2, 5, what="the patient client's first try refused")
        result = waiting.result(timeout=30)
        elapsed = time.monotonic() - started
        assert all(holder.result().status_code == 200 for holder in holders)
    assert (caught.value.status, caught.value.error_type, caught.value.retry_after) == (503, "overloaded_error", 1.0)
    assert elapsed >= 1.0, "sent again before the server's Retry-After"
    assert_same_vectors(result, reference, atol=1e-5)


def test_the_docs_examples_run(server):
    """docs/clients.md's embsvc_client section, run as written against the server."""
    namespace, printed = run_python(blocks(region("embsvc-client"), "python"), server, "docs/clients.md embsvc_client")
    lines = printed.splitlines()
    assert lines[0] == "(2, 32)"  # (2, 1024) on the real model
    assert lines[4] == "float16 float16"
    assert lines[-3:-1] == ["600 600", "600"]
    detail = post(server, "/v1/embeddings", {"input": ["a text", "   "]}).json()["detail"]
    assert lines[-1] == f"400 input {detail}"
    assert namespace["vectors"].colbert[0].shape[1] == 32
