"""/v1/score, /v1/rerank, /tokenize, readable sparse weights and float16 payloads, through
falcon's TestClient with the fake engine (its scores come from each document's length)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from embsvc.core.tokenizer import TextTokenizer
from gpu_pool import SCORE_MODES, EngineOverloaded, EngineState, Kind
from gpu_pool import m3math as scoring
from tests.unit.conftest import AUTH, assert_error, post
from tests.unit.fake_engine import DIM

DOCS = ["a short one", "a somewhat longer document about things", "mid length text", "x"]


@pytest.fixture
def tokenizer(tiny_model) -> TextTokenizer:
    return TextTokenizer(tiny_model)


def fake_table(ids, weights) -> np.ndarray:
    """What the fake engine answers for these inputs (query first)."""
    raw = np.array([[len(x) / 100, 1 / len(x), 0.5] for x in ids[1:]])
    return scoring.combine(raw, weights)


# -- /v1/score ---------------------------------------------------------------------------

def test_score_answers_every_mode_per_document_in_order(client, engine):
    result = post(client, "/v1/score", {"query": "what is it", "documents": DOCS})
    assert result.status_code == 200, result.text
    body = result.json
    ids, weights, unused = engine.score_calls[-1]
    assert weights == (0.4, 0.2, 0.4) and body["weights"] == [0.4, 0.2, 0.4]
    assert sorted(unused) == [0, 1, 2, 3]  # <s>, <pad>, </s>, <unk> of the tiny tokenizer
    assert len(ids) == 1 + len(DOCS) and ids[0][0] == 0 and ids[0][-1] == 2
    table = fake_table(ids, weights)
    assert body["object"] == "list" and body["model"] == "BAAI/bge-m3"
    for index, item in enumerate(body["data"]):
        assert item["object"] == "score" and item["index"] == index
        assert [item[mode] for mode in SCORE_MODES] == pytest.approx(table[index].tolist())
    tokens = sum(len(x) for x in ids)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_score_takes_custom_weights_document_objects_and_max_length(client, engine):
    body = {"query": "q", "documents": [{"text": "one two three four five six"}, "b"], "weights": [1, 0.5, 0],
            "max_length": 4}
    data = post(client, "/v1/score", body).json["data"]
    ids, weights, _ = engine.score_calls[-1]
    assert weights == (1.0, 0.5, 0.0) and len(ids[1]) == 4 and ids[1][-1] == 2
    assert data[0]["colbert+sparse+dense"] == pytest.approx((len(ids[1]) / 100 + 0.5 / len(ids[1])) / 1.5)


@pytest.mark.parametrize("body, status, param", [
    ({"documents": ["a"]}, 400, "query"),
    ({"query": "", "documents": ["a"]}, 400, "query"),
    ({"query": "  ", "documents": ["a"]}, 400, "query"),
    ({"query": ["q"], "documents": ["a"]}, 400, "query"),
    ({"query": "q"}, 400, "documents"),
    ({"query": "q", "documents": "a"}, 400, "documents"),
    ({"query": "q", "documents": []}, 400, "documents"),
    ({"query": "q", "documents": ["a", ""]}, 400, "documents"),
    ({"query": "q", "documents": ["a", 5]}, 400, "documents"),
    ({"query": "q", "documents": [{"txt": "a"}]}, 400, "documents"),
    ({"query": "q", "documents": ["a"] * 5}, 413, "documents"),
    ({"query": "q", "documents": ["a"], "weights": [1, 1]}, 400, "weights"),
    ({"query": "q", "documents": ["a"], "weights": [1, 1, "1"]}, 400, "weights"),
    ({"query": "q", "documents": ["a"], "weights": [1, True, 1]}, 400, "weights"),
    ({"query": "q", "documents": ["a"], "weights": [1, -0.1, 1]}, 400, "weights"),
    ({"query": "q", "documents": ["a"], "weights": [0, 0, 1]}, 400, "weights"),
    ({"query": "q", "documents": ["a"], "weights": {"dense": 1}}, 400, "weights"),
    ({"query": "q", "documents": ["a"], "max_length": 0}, 400, "max_length"),
    ({"query": "q", "documents": ["a"], "max_length": 65}, 400, "max_length"),
    ({"query": "q", "documents": ["a"], "truncate": "no"}, 400, "truncate"),
    ({"query": "q", "documents": ["a"], "model": "gpt-4"}, 404, "model"),
])
def test_score_bad_requests(client, engine, body, status, param):
    error_type = "not_found_error" if status == 404 else "invalid_request_error"
    assert_error(post(client, "/v1/score", body), status, error_type, param)
    assert not engine.calls


def test_score_too_long_with_truncate_false_names_the_text(client, engine):
    long = "word " * 40
    assert_error(post(client, "/v1/score", {"query": long, "documents": ["a"], "truncate": False}), 400, param="query")
    result = post(client, "/v1/score", {"query": "q", "documents": ["a", long], "truncate": False})
    assert_error(result, 400, param="documents")
    assert "documents[1]" in result.json["error"]["message"]
    assert not engine.calls


def test_score_engine_errors_map_like_embeddings(client, engine):
    engine.fail_with = EngineOverloaded("busy", 1.0)
    result = post(client, "/v1/score", {"query": "q", "documents": ["a"]})
    assert_error(result, 503, "overloaded_error", param=None)
    assert result.headers["Retry-After"] == "1"


# -- /v1/rerank --------------------------------------------------------------------------

def test_rerank_results_are_best_first_with_the_default_mode(client, engine):
    body = post(client, "/v1/rerank", {"query": "what", "documents": DOCS, "model": "bge-m3"}).json
    ids, weights, _ = engine.score_calls[-1]
    relevance = fake_table(ids, weights)[:, SCORE_MODES.index("colbert+sparse+dense")]
    expected = np.argsort(-relevance, kind="stable").tolist()
    assert [r["index"] for r in body["results"]] == expected
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(relevance[expected].tolist())
    assert all("document" not in r for r in body["results"])
    assert body["mode"] == "colbert+sparse+dense" and body["id"] and body["model"] == "BAAI/bge-m3"
    assert body["usage"]["total_tokens"] == sum(len(x) for x in ids)


def test_rerank_top_n_documents_and_mode(client, engine):
    body = post(client, "/v1/rerank", {"query": "q", "documents": [{"text": d} for d in DOCS], "top_n": 2,
                                       "return_documents": True, "mode": "sparse"}).json
    ids, _, _ = engine.score_calls[-1]
    shortest = sorted(range(len(DOCS)), key=lambda i: (len(ids[i + 1]), i))[:2]  # the fake's sparse is 1 / tokens
    assert [r["index"] for r in body["results"]] == shortest
    assert [r["document"] for r in body["results"]] == [{"text": DOCS[i]} for i in shortest]
    assert len(post(client, "/v1/rerank", {"query": "q", "documents": DOCS, "top_n": 99}).json["results"]) == 4


def test_rerank_reads_cohere_v2_and_nulls_as_defaults(client, engine):
    body = {"query": "q", "documents": ["one two three four five", "b"], "model": "bge-m3", "top_n": None,
            "max_tokens_per_doc": 3, "return_documents": None, "rank_fields": None}
    result = post(client, "/v2/rerank", body)
    assert result.status_code == 200, result.text
    assert len(result.json["results"]) == 2
    ids, _, _ = engine.score_calls[-1]
    assert max(len(x) for x in ids) == 3


@pytest.mark.parametrize("body, param", [
    ({"top_n": 0}, "top_n"),
    ({"top_n": -1}, "top_n"),
    ({"top_n": "2"}, "top_n"),
    ({"top_n": 1.5}, "top_n"),
    ({"mode": "bm25"}, "mode"),
    ({"return_documents": "yes"}, "return_documents"),
    ({"weights": [0, 0, 0]}, "weights"),
    ({"documents": [None]}, "documents"),
])
def test_rerank_bad_requests(client, engine, body, param):
    assert_error(post(client, "/v1/rerank", {"query": "q", "documents": ["a", "b"], **body}), 400, param=param)
    assert not engine.calls


# -- /tokenize ---------------------------------------------------------------------------

def test_tokenize_gives_ids_tokens_and_counts(client, engine, tokenizer):
    body = post(client, "/tokenize", {"input": ["hello world", "Привет"]}).json
    assert body["object"] == "list" and len(body["data"]) == 2
    for i, (text, item) in enumerate(zip(["hello world", "Привет"], body["data"], strict=True)):
        ids = tokenizer.encode([text])[0].tolist()
        assert item["index"] == i and item["object"] == "tokens" and item["ids"] == ids
        assert item["tokens"] == tokenizer.tokens(np.array(ids)) and item["tokens"][0] == "<s>"
        assert item["count"] == item["untruncated_count"] == len(ids) and item["truncated"] is False
    assert body["usage"]["total_tokens"] == sum(item["count"] for item in body["data"])
    assert not engine.calls  # no engine needed


def test_tokenize_truncates_like_embeddings(client, tokenizer):
    text = "word " * 30
    item = post(client, "/tokenize", {"input": text, "max_length": 10}).json["data"][0]
    full = tokenizer.encode([text])[0]
    assert item["count"] == 10 and item["untruncated_count"] == len(full) and item["truncated"] is True
    assert item["ids"] == [*full[:9].tolist(), 2]
    result = post(client, "/tokenize", {"input": text, "max_length": 10, "truncate": False})
    assert_error(result, 400, param="input")


@pytest.mark.parametrize("body, status, param", [
    ({}, 400, "input"),
    ({"input": ""}, 400, "input"),
    ({"input": [1]}, 400, "input"),
    ({"input": ["a"] * 5}, 413, "input"),
    ({"input": "a", "max_length": 0}, 400, "max_length"),
    ({"input": "a", "truncate": 1}, 400, "truncate"),
    ({"input": "a", "model": "other"}, 404, "model"),
])
def test_tokenize_bad_requests(client, body, status, param):
    assert_error(post(client, "/tokenize", body), status,
                 "not_found_error" if status == 404 else "invalid_request_error", param)


# -- /v1/embeddings: sparse tokens and float16 -------------------------------------------

def test_sparse_tokens_give_each_kept_token_text_its_weight(client, engine, tokenizer):
    item = post(client, "/v1/embeddings", {"input": "hello hello world", "return_sparse_tokens": True}).json["data"][0]
    ids, _ = engine.calls[-1]
    kept = [t for t in dict.fromkeys(ids[0].tolist()) if t > 3]  # first-seen order, special tokens dropped
    texts = tokenizer.decode_each(np.array(kept))
    assert item["sparse_tokens"] == {text: pytest.approx(t / 1000) for text, t in zip(texts, kept, strict=True)}
    assert list(item["sparse_tokens"]) == list(dict.fromkeys(texts))
    assert "▁" not in "".join(item["sparse_tokens"])  # decoded text, as FlagEmbedding's convert_id_to_token
    assert item["sparse_embedding"] == {str(t): pytest.approx(t / 1000) for t in kept}
    assert "sparse_tokens" not in post(client, "/v1/embeddings", {"input": "hello"}).json["data"][0]


def test_float16_base64_round_trips_with_numpy(client, engine):
    body = {"input": "abc def", "encoding_format": "base64", "embedding_dtype": "float16"}
    item = post(client, "/v1/embeddings", body).json["data"][0]
    assert engine.calls[-1][1] & Kind.HALF, "the engine is asked for float16 vectors"
    dense = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f2")
    assert dense.dtype == np.float16 and dense.tolist() == [0.5] * DIM
    colbert = np.frombuffer(base64.b64decode(item["colbert_embedding"]), dtype="<f2").reshape(-1, DIM)
    assert colbert.shape[0] >= 1 and (colbert == np.float16(0.25)).all()
    as32 = post(client, "/v1/embeddings", {**body, "embedding_dtype": "float32"}).json["data"][0]
    assert not engine.calls[-1][1] & Kind.HALF
    assert len(base64.b64decode(as32["embedding"])) == 2 * len(base64.b64decode(item["embedding"]))


@pytest.mark.parametrize("body, param", [
    ({"embedding_dtype": "float16"}, "embedding_dtype"),  # needs base64
    ({"encoding_format": "base64", "embedding_dtype": "int8"}, "embedding_dtype"),
    ({"encoding_format": "base64", "embedding_dtype": 16}, "embedding_dtype"),
    ({"return_sparse_tokens": "yes"}, "return_sparse_tokens"),
    ({"return_sparse_tokens": True, "return_sparse": False}, "return_sparse_tokens"),
])
def test_embedding_option_errors(client, engine, body, param):
    assert_error(post(client, "/v1/embeddings", {"input": "a", **body}), 400, param=param)
    assert not engine.calls


# -- shared ------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body", [("/v1/score", {"query": "q", "documents": ["a"]}),
                                        ("/v1/rerank", {"query": "q", "documents": ["a"]}),
                                        ("/tokenize", {"input": "a"})])
def test_new_endpoints_wait_for_the_model(client, engine, path, body):
    engine.state = EngineState.LOADING
    result = post(client, path, body)
    assert_error(result, 503, "unavailable_error", param=None)
    assert result.headers["Retry-After"] == "1" and not engine.calls


@pytest.mark.parametrize("path", ["/v1/score", "/v1/rerank", "/v2/rerank", "/tokenize"])
def test_new_endpoints_need_a_token_and_post(client, path):
    result = post(client, path, {"query": "q", "documents": ["a"], "input": "a"}, headers={})
    assert_error(result, 401, "authentication_error", param=None)
    assert result.headers["WWW-Authenticate"] == "Bearer"
    assert client.simulate_get(path, headers=AUTH).status_code == 405


def test_new_endpoints_are_in_openapi_and_root(client):
    spec = client.simulate_get("/openapi.json").json
    for path in ("/v1/score", "/v1/rerank", "/v2/rerank", "/tokenize"):
        assert "post" in spec["paths"][path]
    embeddings = spec["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"embedding_dtype", "return_sparse_tokens"} <= set(embeddings["properties"])
    endpoints = client.simulate_get("/").json["endpoints"]
    assert endpoints["score"] == "POST /v1/score" and endpoints["tokenize"] == "POST /tokenize"
