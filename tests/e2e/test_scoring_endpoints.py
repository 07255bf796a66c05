"""/v1/score, /v1/rerank (with LangChain's CohereRerank, Cohere's SDK and the Jina-style call of
LlamaIndex's JinaRerank), /tokenize, readable sparse weights and float16 payloads, over real HTTP."""

from __future__ import annotations

import base64

import cohere
import numpy as np
import pytest
import requests
from langchain_cohere import CohereRerank
from langchain_core.documents import Document

from tests.e2e.conftest import TOKEN, ok, post

QUERY = "How does hybrid retrieval combine dense and sparse vectors?"
DOCUMENTS = [
    "Hybrid retrieval adds sparse lexical weights to dense vectors.",
    "Поиск по документам объединяет плотные и разреженные векторы.",
    "北京是中国的首都。",
    "hello",
    "ColBERT compares every query token with every document token and keeps the best match. " * 5,
    "مرحبا بالعالم",
]
MODES = ("dense", "sparse", "colbert", "sparse+dense", "colbert+sparse+dense")


def scores(server, **body) -> list[dict]:
    return ok(post(server, "/v1/score", {"query": QUERY, "documents": DOCUMENTS, **body}))["data"]


def best_first(server, mode: str = "colbert+sparse+dense") -> list[int]:
    data = scores(server)
    return sorted(range(len(DOCUMENTS)), key=lambda i: -data[i][mode])


def test_score_equals_what_the_three_vectors_give(server):
    """Recomputed here from /v1/embeddings' vectors: the score never needed them on the wire."""
    data = scores(server, weights=[0.5, 0.3, 0.2])
    items = ok(post(server, "/v1/embeddings", {"input": [QUERY, *DOCUMENTS]}))["data"]
    query = items[0]
    for score, doc in zip(data, items[1:], strict=True):
        dense = np.dot(query["dense_embedding"], doc["dense_embedding"])
        sparse = sum(w * doc["sparse_embedding"].get(t, 0.0) for t, w in query["sparse_embedding"].items())
        q, d = np.array(query["colbert_embedding"]), np.array(doc["colbert_embedding"])
        colbert = (q @ d.T).max(axis=1).mean()
        expected = [dense, sparse, colbert, (0.5 * dense + 0.3 * sparse) / 0.8,
                    0.5 * dense + 0.3 * sparse + 0.2 * colbert]
        assert [score[mode] for mode in MODES] == pytest.approx(expected, abs=1e-4)


def test_rerank_is_best_first_with_top_n_and_documents(server):
    order = best_first(server)
    body = ok(post(server, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": 3,
                                          "return_documents": True}))
    assert [r["index"] for r in body["results"]] == order[:3]
    assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[i] for i in order[:3]]
    scores_ = [r["relevance_score"] for r in body["results"]]
    assert scores_ == sorted(scores_, reverse=True)
    by_dense = ok(post(server, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "mode": "dense"}))
    assert [r["index"] for r in by_dense["results"]] == best_first(server, "dense")


def test_langchain_cohere_rerank(server):
    """LangChain's CohereRerank (Cohere's v2 client underneath, so /v2/rerank) pointed at this server."""
    reranker = CohereRerank(base_url=server.url, cohere_api_key=TOKEN, model="bge-m3", top_n=2)
    documents = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(DOCUMENTS)]
    compressed = reranker.compress_documents(documents, QUERY)
    order = best_first(server)
    assert [d.metadata["n"] for d in compressed] == order[:2]
    expected = {i: s["colbert+sparse+dense"] for i, s in enumerate(scores(server))}
    for doc in compressed:
        assert doc.metadata["relevance_score"] == pytest.approx(expected[doc.metadata["n"]], abs=1e-6)
    every = reranker.rerank(DOCUMENTS, QUERY, top_n=None)
    assert [r["index"] for r in every] == order


def test_cohere_sdk_v1_rerank_with_documents(server):
    client = cohere.Client(api_key=TOKEN, base_url=server.url, timeout=60)
    response = client.rerank(model="bge-m3", query=QUERY, documents=DOCUMENTS, top_n=4, return_documents=True)
    order = best_first(server)
    assert [r.index for r in response.results] == order[:4]
    assert [r.document.text for r in response.results] == [DOCUMENTS[i] for i in order[:4]]


def test_jina_style_call_as_llamaindex_sends_it(server):
    """The request of llama-index-postprocessor-jinaai-rerank's JinaRerank(base_url=…/v1) (its
    package drags in llama-index-core, too heavy for the tests): a requests session, Bearer key,
    identity encoding, and it reads results[i]["index"] and ["relevance_score"]."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "identity"})
    response = session.post(f"{server.url}/v1/rerank", json={
        "query": QUERY, "documents": DOCUMENTS, "model": "bge-m3", "top_n": 2}, timeout=60).json()
    assert [r["index"] for r in response["results"]] == best_first(server)[:2]
    assert all(isinstance(r["relevance_score"], float) for r in response["results"])


def test_tokenize_counts_match_embedding_usage_and_truncation(server):
    texts = ["hello world", DOCUMENTS[4]]
    body = ok(post(server, "/tokenize", {"input": texts, "max_length": 16}))
    usage = ok(post(server, "/v1/embeddings", {"input": texts, "max_length": 16, "return_dense": True,
                                               "return_sparse": False, "return_colbert": False}))["usage"]
    assert sum(item["count"] for item in body["data"]) == usage["prompt_tokens"] == body["usage"]["total_tokens"]
    short, long = body["data"]
    assert short["truncated"] is False and short["tokens"][0] == "<s>" and short["tokens"][-1] == "</s>"
    assert long["count"] == 16 and long["untruncated_count"] > 16 and long["truncated"] is True
    assert long["ids"][-1] == 2 and len(long["tokens"]) == 16
    refused = post(server, "/tokenize", {"input": texts, "max_length": 16, "truncate": False})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input"


def test_float16_base64_round_trip(server):
    body = {"input": DOCUMENTS[:2], "encoding_format": "base64"}
    wide = ok(post(server, "/v1/embeddings", body))["data"]
    narrow = ok(post(server, "/v1/embeddings", {**body, "embedding_dtype": "float16"}))["data"]
    for w, n in zip(wide, narrow, strict=True):
        dense32 = np.frombuffer(base64.b64decode(w["embedding"]), dtype="<f4")
        dense16 = np.frombuffer(base64.b64decode(n["embedding"]), dtype="<f2")
        assert dense16.dtype == np.float16 and dense16.shape == dense32.shape
        np.testing.assert_array_equal(dense16, dense32.astype(np.float16))
        colbert32 = np.frombuffer(base64.b64decode(w["colbert_embedding"]), dtype="<f4").reshape(-1, 32)
        colbert16 = np.frombuffer(base64.b64decode(n["colbert_embedding"]), dtype="<f2").reshape(-1, 32)
        np.testing.assert_allclose(colbert16.astype(np.float32), colbert32, atol=1e-3)
        assert len(n["colbert_embedding"]) < 0.6 * len(w["colbert_embedding"])


def test_sparse_tokens_beside_the_ids(server):
    text = "hybrid retrieval, retrieval"
    item = ok(post(server, "/v1/embeddings", {"input": text, "return_sparse_tokens": True, "return_dense": False,
                                             "return_colbert": False}))["data"][0]
    pieces = ok(post(server, "/tokenize", {"input": text}))["data"][0]
    expected: dict[str, float] = {}
    for token_id, token in zip(pieces["ids"], pieces["tokens"], strict=True):
        if str(token_id) in item["sparse_embedding"]:
            # A lone piece decodes to its text without the word-start mark.
            expected[token.replace("▁", " ").strip()] = item["sparse_embedding"][str(token_id)]
    assert item["sparse_tokens"] == pytest.approx(expected) and list(item["sparse_tokens"]) == list(expected)


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/score", {"query": "q"}, 400, "documents"),
    ("/v1/score", {"query": "q", "documents": ["a"], "weights": [1, 2]}, 400, "weights"),
    ("/v1/score", {"query": "q", "documents": ["a"], "model": "nope"}, 404, "model"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "mode": "bm25"}, 400, "mode"),
    ("/v1/rerank", {"query": "", "documents": ["a"]}, 400, "query"),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 257}, 413, "documents"),
    ("/tokenize", {"input": []}, 400, "input"),
    ("/v1/embeddings", {"input": "a", "embedding_dtype": "float16"}, 400, "embedding_dtype"),
])
def test_bad_input_gets_the_api_errors(server, path, body, status, param):
    response = post(server, path, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"]["param"] == param and error["detail"] == error["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/score", "/v1/rerank", "/v2/rerank", "/tokenize"])
def test_new_endpoints_refuse_a_wrong_token(server, path):
    response = post(server, path, {"query": "q", "documents": ["a"], "input": "a"},
                    headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_error"


def test_openapi_lists_the_new_endpoints(server):
    paths = requests.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    assert {"/v1/score", "/v1/rerank", "/v2/rerank", "/tokenize"} <= set(paths)
