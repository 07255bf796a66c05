"""The web app through falcon's TestClient with a fake engine: the contract, without a model."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from gpu_pool.errors import ClientGone, EngineFailed, EngineOverloaded, EngineTimeout, EngineUnavailable
from gpu_pool.wire.shared import EngineState
from tests.unit.conftest import AUTH, TOKEN, assert_error, post
from tests.unit.fake_engine import DIM


def test_all_kinds_by_default(client, engine):
    result = post(client, "/v1/embeddings", {"input": ["hello world", "привет мир"]})
    assert result.status_code == 200, result.text
    body = result.json
    assert body["object"] == "list" and body["model"] == "BAAI/bge-m3"
    assert body["embedding_types"] == ["dense", "sparse", "colbert"]
    ids, _ = engine.calls[0]
    assert body["usage"] == {"prompt_tokens": sum(map(len, ids)), "total_tokens": sum(map(len, ids))}
    for i, item in enumerate(body["data"]):
        assert item["index"] == i and item["object"] == "embedding"
        assert item["embedding"] == item["dense_embedding"] == [i + 0.5] * DIM
        assert len(item["colbert_embedding"]) == len(ids[i]) - 1
        # Special tokens are dropped; the fake's weight is id / 1000.
        expected = {str(t): pytest.approx(t / 1000.0) for t in ids[i].tolist() if t > 3}
        assert item["sparse_embedding"] == expected


def test_only_requested_kinds_and_null_for_others(client):
    body = post(client, "/v1/embeddings", {"input": "q", "return_sparse": False, "return_colbert": False}).json
    assert body["embedding_types"] == ["dense"]
    assert body["data"][0]["sparse_embedding"] is None and body["data"][0]["colbert_embedding"] is None
    body = post(client, "/v1/embeddings", {"input": "q", "return_dense": False}).json
    assert "embedding" not in body["data"][0] and body["data"][0]["dense_embedding"] is None


def test_base64_is_little_endian_float32(client):
    item = post(client, "/v1/embeddings", {"input": "abc def", "encoding_format": "base64"}).json["data"][0]
    dense = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    assert dense.tolist() == [0.5] * DIM
    colbert = np.frombuffer(base64.b64decode(item["colbert_embedding"]), dtype="<f4").reshape(-1, DIM)
    assert (colbert == 0.25).all()


def test_truncation_and_truncate_false(client, engine):
    text = "word " * 100
    body = post(client, "/v1/embeddings", {"input": text, "max_length": 10}).json
    assert body["usage"]["prompt_tokens"] == 10
    ids, _ = engine.calls[-1]
    assert ids[0][0] == 0 and ids[0][-1] == 2  # <s> … </s> kept
    assert_error(post(client, "/v1/embeddings", {"input": text, "max_length": 10, "truncate": False}), 400,
                 "invalid_request_error", "input")


@pytest.mark.parametrize("body, status, param", [
    ({}, 400, "input"),
    ({"input": ""}, 400, "input"),
    ({"input": "   "}, 400, "input"),
    ({"input": []}, 400, "input"),
    ({"input": ["ok", 5]}, 400, "input"),
    ({"input": [1, 2, 3]}, 400, "input"),
    ({"input": ["a"] * 5}, 413, "input"),
    ({"input": "a", "return_dense": "true"}, 400, "return_dense"),
    ({"input": "a", "return_sparse": 1}, 400, "return_sparse"),
    ({"input": "a", "return_colbert": None}, 400, "return_colbert"),
    ({"input": "a", "return_dense": False, "return_sparse": False, "return_colbert": False}, 400, None),
    ({"input": "a", "max_length": 0}, 400, "max_length"),
    ({"input": "a", "max_length": -1}, 400, "max_length"),
    ({"input": "a", "max_length": 10**9}, 400, "max_length"),
    ({"input": "a", "max_length": 3.5}, 400, "max_length"),
    ({"input": "a", "max_length": True}, 400, "max_length"),
    ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "a", "truncate": "no"}, 400, "truncate"),
    ({"input": "a", "model": "gpt-4"}, 404, "model"),
    ({"input": "a", "model": 3}, 400, "model"),
])
def test_bad_requests(client, engine, body, status, param):
    result = post(client, "/v1/embeddings", body)
    assert result.status_code == status, result.text
    assert result.json["error"]["param"] == param
    assert not engine.calls


def test_model_aliases_and_unknown_fields_accepted(client):
    body = {"input": "a", "model": "bge-m3", "user": "u1", "dimensions": 5}
    assert post(client, "/v1/embeddings", body).status_code == 200


@pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"input": "\\ud800"}'])
def test_unparseable_bodies(client, raw):
    result = client.simulate_post("/v1/embeddings", body=raw, headers=AUTH)
    assert_error(result, 400, "invalid_request_error")


def test_body_parsed_whatever_the_content_type(client):
    headers = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    assert client.simulate_post("/v1/embeddings", body=b'{"input": "x"}', headers=headers).status_code == 200


def test_body_over_limit_is_413(client):
    assert_error(post(client, "/v1/embeddings", {"input": "x" * 5000}), 413, "invalid_request_error")


@pytest.mark.parametrize("path, method", [("/v1/embeddings", "POST"), ("/stats", "GET"), ("/v1/models", "GET"),
                                          ("/v1/models/BAAI/bge-m3", "GET")])
@pytest.mark.parametrize("header", [None, "Bearer", "Basic dGVzdA==", "Bearer wrong", f"bearer{TOKEN}"])
def test_protected_endpoints_need_a_valid_token(client, path, method, header):
    headers = {"Authorization": header} if header else {}
    result = client.simulate_request(method, path, headers=headers, json={"input": "a"})
    assert_error(result, 401, "authentication_error")
    assert result.headers["WWW-Authenticate"] == "Bearer"


def test_rotated_tokens_both_work(client):
    for token in (TOKEN, "second-token"):
        assert post(client, "/v1/embeddings", {"input": "a"}, {"Authorization": f"Bearer {token}"}).status_code == 200


def test_public_endpoints(client, engine):
    assert client.simulate_get("/health").json["status"] == "ok"
    root = client.simulate_get("/").json
    assert root["model"] == "BAAI/bge-m3" and root["batching"]["batch_size"] == 8
    spec = client.simulate_get("/openapi.json").json
    assert spec["openapi"].startswith("3.1") and "/v1/embeddings" in spec["paths"]
    engine.state = EngineState.LOADING
    result = client.simulate_get("/health")
    assert result.status_code == 503 and result.json == {"status": "loading"}
    engine.state = EngineState.UNAVAILABLE
    assert client.simulate_get("/health").json == {"status": "unavailable"}


def test_root_lists_the_routes_and_the_one_batch_token_limit(client):
    root = client.simulate_get("/").json
    endpoints = root["endpoints"]
    assert endpoints["rerank"] == "POST /v1/rerank" and endpoints["rerank_v2"] == "POST /v2/rerank"
    assert endpoints["model"] == "GET /v1/models/{model_id}" and endpoints["tei_info"] == "GET /info"
    for listed in endpoints.values():
        method, path = listed.split(" ")
        if "{" not in path:
            assert client.simulate_request(method, path).status_code != 404, listed
    stats = client.simulate_get("/stats", headers=AUTH).json
    detailed = client.simulate_get("/health/detailed", headers=AUTH).json
    tei_info = client.simulate_get("/info", headers=AUTH).json
    limits = {root["batching"]["max_batch_tokens"], stats["config"]["max_batch_tokens"],
              detailed["batching"]["max_batch_tokens"], tei_info["max_batch_tokens"]}
    assert len(limits) == 1 and isinstance(limits.pop(), int), "MAX_BATCH_TOKENS unset: the engines' value, everywhere"


def test_models(client):
    listing = client.simulate_get("/v1/models", headers=AUTH).json
    assert listing["object"] == "list" and listing["data"][0]["id"] == "BAAI/bge-m3"
    assert client.simulate_get("/v1/models/BAAI/bge-m3", headers=AUTH).json["object"] == "model"
    assert client.simulate_get("/v1/models/bge-m3", headers=AUTH).status_code == 200
    assert_error(client.simulate_get("/v1/models/nope", headers=AUTH), 404, "not_found_error")


def test_stats_shape(client):
    post(client, "/v1/embeddings", {"input": "a"})
    stats = client.simulate_get("/stats", headers=AUTH).json
    assert stats["batching"]["processed_requests"] == 1
    assert {"queue_size", "average_batch_size", "average_processing_time"} <= set(stats["batching"])
    assert stats["config"] == stats["config"] | {"batch_size": 8, "timeout_ms": 100, "max_queue_size": 50}


def test_unknown_path_and_wrong_method(client):
    assert_error(client.simulate_get("/nope", headers=AUTH), 404, "not_found_error")
    result = client.simulate_get("/v1/embeddings", headers=AUTH)
    assert_error(result, 405, "invalid_request_error")
    assert "POST" in result.headers["Allow"]


@pytest.mark.parametrize("exc, status, error_type", [
    (EngineOverloaded("busy", 1.0), 503, "overloaded_error"),
    (EngineUnavailable("restarting"), 503, "unavailable_error"),
    (EngineTimeout("late"), 504, "timeout_error"),
    (EngineFailed("boom"), 500, "server_error"),
    # The engine has retried the input alone: it does not fit (a 413, not worth retrying as it is).
    (EngineFailed("an input of 9000 tokens needs more memory than the device has", out_of_memory=True), 413,
     "invalid_request_error"),
    (ClientGone("the client closed the connection"), 499, "client_closed_request"),
])
def test_engine_errors_map_to_statuses(client, engine, exc, status, error_type):
    engine.fail_with = exc
    result = post(client, "/v1/embeddings", {"input": "a"})
    assert_error(result, status, error_type)
    if isinstance(exc, EngineOverloaded):
        assert result.headers["Retry-After"] == "1"


def test_unexpected_error_is_500_without_details(client, engine):
    engine.fail_with = None
    engine.embed = lambda *a: (_ for _ in ()).throw(KeyError("/secret/path.py"))
    result = post(client, "/v1/embeddings", {"input": "a"})
    assert_error(result, 500, "server_error")
    assert "secret" not in result.text and "Traceback" not in result.text
