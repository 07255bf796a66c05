"""Text-embeddings-inference's API over real HTTP against the real server: TEI's shapes with
the numbers of this server's own endpoints, TEI's errors, and what goes with it (token-id
inputs on /v1/embeddings, /health/detailed, CORS for browser clients)."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from testkit.server import Server
from tests.e2e.conftest import AUTH, embed, ok, post

TEXTS = ["What is BGE-M3?", "Paris is the capital of France.", "Гибридный поиск сочетает два подхода."]


def tei_error(response: requests.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    return str(body["error"])


@pytest.fixture(scope="module")
def reference(server: Server) -> dict:
    """All three kinds of TEXTS from /v1/embeddings."""
    return embed(server, {"input": TEXTS})


@pytest.mark.parametrize("path", ["/embed", "/"])
def test_dense_vectors_are_those_of_v1_embeddings(server, reference, path):
    rows = ok(post(server, path, {"inputs": TEXTS}))
    expected = [item["dense_embedding"] for item in reference["data"]]
    np.testing.assert_allclose(rows, expected, atol=1e-6)
    single = ok(post(server, path, {"inputs": TEXTS[1], "truncate": True, "normalize": True}))
    np.testing.assert_allclose(single, [expected[1]], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)


def test_sparse_vectors_are_the_lexical_weights(server, reference):
    rows = ok(post(server, "/embed_sparse", {"inputs": TEXTS}))
    for values, item in zip(rows, reference["data"], strict=True):
        indices = [v["index"] for v in values]
        assert indices == sorted(indices) and len(indices) == len(item["sparse_embedding"])
        expected = item["sparse_embedding"]
        for value in values:
            assert value["value"] == pytest.approx(expected[str(value["index"])], abs=1e-6)


def test_per_token_vectors_are_the_colbert_vectors(server, reference):
    rows = ok(post(server, "/embed_all", {"inputs": TEXTS}))
    tokens = ok(post(server, "/tokenize", {"input": TEXTS}))["data"]
    for matrix, item, counted in zip(rows, reference["data"], tokens, strict=True):
        assert len(matrix) == counted["count"] - 1  # a row per token but <s>
        np.testing.assert_allclose(matrix, item["colbert_embedding"], atol=1e-6)


def test_rerank_has_the_scores_of_v1_rerank(server):
    texts = [*TEXTS[1:], "What is BGE-M3?"]
    ranks = ok(post(server, "/rerank", {"query": "What is BGE-M3?", "texts": texts, "return_text": True}))
    ours = ok(post(server, "/v1/rerank", {"query": "What is BGE-M3?", "documents": texts}))["results"]
    assert ranks[0]["index"] == 2 and ranks[0]["text"] == "What is BGE-M3?"  # the copy of the query first
    assert [r["index"] for r in ranks] == [r["index"] for r in ours]
    np.testing.assert_allclose([r["score"] for r in ranks], [r["relevance_score"] for r in ours], atol=1e-6)
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    assert all("text" not in r for r in ok(post(server, "/rerank", {"query": "q", "texts": texts})))


def test_tokenize_and_decode_round_trip(server):
    text = "Tokenizers give offsets: wörld, 世界!"
    tokens = ok(post(server, "/tokenize", {"inputs": [text]}))[0]
    ids = ok(post(server, "/tokenize", {"input": text}))["data"][0]["ids"]
    assert [t["id"] for t in tokens] == ids
    assert tokens[0]["special"] and tokens[0]["start"] is None and tokens[-1]["text"] == "</s>"
    assert all(t["text"] == text[t["start"]:t["stop"]] for t in tokens[1:-1])
    assert ok(post(server, "/decode", {"ids": [ids, ids]})) == [text, text]


def test_info(server):
    info = ok(requests.get(f"{server.url}/info", headers=AUTH, timeout=10))
    assert info["model_id"] == "BAAI/bge-m3" and info["model_dtype"] == "float32"
    assert info["max_input_length"] == 8192 and info["max_client_batch_size"] == 256
    assert info["max_batch_requests"] == 8 and info["max_batch_tokens"] == 16384
    assert info["model_type"] == {"embedding": {"pooling": "cls"}} and info["auto_truncate"] is True


def test_errors_in_tei_shape(server):
    tei_error(post(server, "/embed", {"inputs": []}), 400, "Empty")
    tei_error(post(server, "/embed", {"inputs": "x"}, headers={}), 401, "Unauthorized")
    tei_error(post(server, "/embed", {"inputs": ["a"] * 257}), 413, "Validation")
    tei_error(post(server, "/embed", b"{not json"), 422, "Validation")
    assert "prompt" in tei_error(post(server, "/embed_sparse", {"inputs": "a", "prompt_name": "query"}),
                                 422, "Validation")
    assert "normalize" in tei_error(post(server, "/embed", {"inputs": "a", "normalize": False}), 422, "Validation")
    tei_error(post(server, "/embed_all", {"inputs": "word " * 9000, "truncate": False}), 422, "Validation")
    tei_error(post(server, "/rerank", {"query": "q", "texts": []}), 400, "Empty")
    tei_error(post(server, "/decode", {"ids": [-1]}), 422, "Validation")
    tei_error(requests.get(f"{server.url}/embed", headers=AUTH, timeout=10), 405, "Validation")
    # This server's own endpoints keep their own shape.
    assert set(post(server, "/v1/embeddings", {"input": []}).json()) == {"error", "detail"}


@pytest.mark.parametrize("ids", [[9906, 1917], [[9906, 1917], [13347, 374, 426, 11010, 9437, 18, 30]]])
def test_token_id_arrays_name_the_langchain_setting(server, ids):
    """What LangChain's OpenAIEmbeddings sends with its defaults: tiktoken's cl100k ids."""
    response = post(server, "/v1/embeddings", {"input": ids, "model": "bge-m3", "encoding_format": "base64"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]["param"] == "input" and "check_embedding_ctx_length=False" in body["detail"]


def test_health_detailed(server):
    assert requests.get(f"{server.url}/health/detailed", timeout=10).json()["detail"] == "Missing API token"
    body = ok(requests.get(f"{server.url}/health/detailed", headers=AUTH, timeout=10))
    assert body["status"] == "ok" and body["model"]["status"] == "loaded" and body["model"]["device"] == "cpu"
    assert body["engines"] == ["ready"] and body["batching"]["stats"]["processed_requests"] >= 0


def test_the_original_error_words(server):
    assert post(server, "/v1/embeddings", {"input": "a"}, headers={}).json()["detail"] == "Missing API token"
    wrong = {"Authorization": "Bearer not-the-token"}
    assert post(server, "/v1/embeddings", {"input": "a"}, headers=wrong).json()["detail"] == "Invalid API token"
    assert post(server, "/v1/embeddings", {"input": ["ok", ""]}).json()["detail"] == \
        "Text at index 1 is too short (minimum 1 characters)"
    models = requests.get(f"{server.url}/v1/models/other", headers=AUTH, timeout=10)
    assert models.status_code == 404 and models.json()["detail"] == "Model other not found"


@pytest.mark.slow
def test_cors_for_a_browser_origin(start_server):
    server = start_server(ALLOWED_ORIGINS="https://app.example")
    preflight = requests.options(f"{server.url}/embed", timeout=10, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
    answer = post(server, "/embed", {"inputs": "a"}, headers={**AUTH, "Origin": "https://app.example"})
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]
    stranger = post(server, "/embed", {"inputs": "a"}, headers={**AUTH, "Origin": "https://other.example"})
    assert stranger.status_code == 200 and "Access-Control-Allow-Origin" not in stranger.headers
