"""Text-embeddings-inference's API through falcon's TestClient with the fake engine: TEI's
fields, shapes, statuses and error bodies, and the same numbers as this server's own endpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from falcon import testing

from embsvc.app import create_app
from embsvc.config import ConfigError
from gpu_pool import Kind
from gpu_pool.errors import EngineFailed, EngineOverloaded, EngineTimeout, EngineUnavailable
from gpu_pool.wire.shared import EngineState
from tests.unit.conftest import AUTH, LIMITS, post
from tests.unit.fake_engine import DIM

MAX_INPUTS, MAX_TOKENS = int(LIMITS["MAX_INPUTS"]), int(LIMITS["MAX_TOKENS"])


def tei_error(result: testing.Result, status: int, error_type: str) -> str:
    """The message of an error in TEI's shape: exactly ``error`` and ``error_type``."""
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/json"
    assert set(result.json) == {"error", "error_type"}, result.json
    assert result.json["error_type"] == error_type and result.json["error"]
    return str(result.json["error"])


def test_embed_answers_a_row_per_input_in_order(client, engine):
    single = post(client, "/embed", {"inputs": "hello world"})
    assert single.status_code == 200, single.text
    assert single.json == [[0.5] * DIM]  # a single string is a batch of one
    batch = post(client, "/embed", {"inputs": ["one", "two", "three"]})
    assert batch.json == [[i + 0.5] * DIM for i in range(3)]
    assert engine.calls[-1][1] == Kind.DENSE  # only the dense head is asked for


def test_embed_is_the_dense_vector_of_v1_embeddings(client):
    texts = ["hello world", "привет мир"]
    ours = post(client, "/v1/embeddings", {"input": texts, "return_sparse": False, "return_colbert": False}).json
    tei = post(client, "/embed", {"inputs": texts}).json
    assert tei == [item["dense_embedding"] for item in ours["data"]]


def test_post_root_is_embed_and_get_root_stays_the_service_information(client):
    assert post(client, "/", {"inputs": ["a", "b"]}).json == post(client, "/embed", {"inputs": ["a", "b"]}).json
    info = client.simulate_get("/")
    assert info.status_code == 200 and info.json["model"] == "BAAI/bge-m3"
    assert info.json["endpoints"]["tei_embed"] == "POST /embed" and info.json["docs_url"] == "/docs"
    tei_error(client.simulate_post("/", json={"inputs": "a"}), 401, "Unauthorized")


def test_embed_sparse_is_sparse_embedding_by_index(client):
    texts = ["hello world again", "привет"]
    ours = post(client, "/v1/embeddings", {"input": texts, "return_dense": False, "return_colbert": False})
    tei = post(client, "/embed_sparse", {"inputs": texts})
    assert tei.status_code == 200, tei.text
    for values, item in zip(tei.json, ours.json["data"], strict=True):
        assert set(values[0]) == {"index", "value"}
        assert [v["index"] for v in values] == sorted(v["index"] for v in values)
        assert {str(v["index"]): v["value"] for v in values} == item["sparse_embedding"]
    # The same float32 numbers, written alike.
    first = json.loads(ours.text)["data"][0]["sparse_embedding"]
    assert tei.text.count('"value":') == len(first) + len(ours.json["data"][1]["sparse_embedding"])
    for index, weight in first.items():
        assert f'{{"index":{index},"value":{json.dumps(weight)}}}' in tei.text


def test_embed_all_is_the_colbert_vectors(client, engine):
    tei = post(client, "/embed_all", {"inputs": ["a b c d", "e"]})
    assert tei.status_code == 200, tei.text
    ids, _ = engine.calls[-1]
    ours = post(client, "/v1/embeddings", {"input": ["a b c d", "e"], "return_dense": False, "return_sparse": False})
    for rows, token_ids, item in zip(tei.json, ids, ours.json["data"], strict=True):
        assert len(rows) == len(token_ids) - 1 and rows == item["colbert_embedding"]


def test_rerank_is_best_first_with_the_scores_of_v1_rerank(client):
    texts = ["a much longer text of many words here", "short", "a medium text"]
    tei = post(client, "/rerank", {"query": "q", "texts": texts, "return_text": True})
    assert tei.status_code == 200, tei.text
    ours = post(client, "/v1/rerank", {"query": "q", "documents": texts}).json["results"]
    assert [r["index"] for r in tei.json] == [r["index"] for r in ours]
    assert [r["score"] for r in tei.json] == [r["relevance_score"] for r in ours]
    assert [r["text"] for r in tei.json] == [texts[r["index"]] for r in ours]
    assert tei.json == sorted(tei.json, key=lambda r: -r["score"])
    plain = post(client, "/rerank", {"query": "q", "texts": texts, "raw_scores": True})
    assert [set(r) for r in plain.json] == [{"index", "score"}] * 3
    assert [r["score"] for r in plain.json] == [r["score"] for r in tei.json]


def test_tei_tokenize_gives_tokens_with_character_offsets(client):
    text = "Hello wörld, 世界"
    result = post(client, "/tokenize", {"inputs": text})
    assert result.status_code == 200, result.text
    tokens = result.json[0]
    assert tokens[0] == {"id": 0, "text": "<s>", "special": True, "start": None, "stop": None}
    assert tokens[-1] == {"id": 2, "text": "</s>", "special": True, "start": None, "stop": None}
    for token in tokens[1:-1]:
        assert not token["special"] and token["text"] == text[token["start"]:token["stop"]]
    ids = post(client, "/tokenize", {"input": text}).json["data"][0]["ids"]
    assert [t["id"] for t in tokens] == ids  # the same tokenizer as this server's own /tokenize
    bare = post(client, "/tokenize", {"inputs": [text, "x"], "add_special_tokens": False}).json
    assert [t["id"] for t in bare[0]] == ids[1:-1] and len(bare) == 2


def test_tokenize_tells_the_two_bodies_apart(client):
    ours = post(client, "/tokenize", {"input": "a b", "inputs": "ignored"})
    assert ours.json["object"] == "list"  # input wins: this server's own shape
    assert post(client, "/tokenize", {"inputs": "a b"}).json[0][0]["text"] == "<s>"
    tei_error(post(client, "/tokenize", {"inputs": []}), 400, "Empty")
    tei_error(post(client, "/tokenize", {"inputs": "a", "prompt_name": "query"}), 422, "Validation")
    assert post(client, "/tokenize", {"input": []}).json["detail"] == "Input cannot be empty"


def test_decode(client):
    ids = post(client, "/tokenize", {"input": "hello world"}).json["data"][0]["ids"]
    assert post(client, "/decode", {"ids": ids}).json == ["hello world"]
    assert post(client, "/decode", {"ids": [ids, ids[1:2]]}).json[0] == "hello world"
    assert post(client, "/decode", {"ids": ids, "skip_special_tokens": False}).json == ["<s> hello world</s>"]
    assert post(client, "/decode", {"ids": [float(i) for i in ids]}).json == ["hello world"]
    assert post(client, "/decode", {"ids": [4_000_000_000]}).json == [""]  # unknown ids are left out, as in TEI
    tei_error(post(client, "/decode", {"ids": []}), 400, "Empty")
    tei_error(post(client, "/decode", {"ids": [[1], []]}), 400, "Empty")
    for bad in ([-1], [2**32], [1.5], ["a"], [True], [[1], 2], "12", None):
        tei_error(post(client, "/decode", {"ids": bad}), 422, "Validation")
    tei_error(post(client, "/decode", {"ids": [[1]] * (MAX_INPUTS + 1)}), 413, "Validation")


def test_info(client):
    info = client.simulate_get("/info", headers=AUTH)
    assert info.status_code == 200, info.text
    assert info.json == {
        "model_id": "BAAI/bge-m3", "model_sha": None, "model_dtype": "float32", "served_model_name": "BAAI/bge-m3",
        "model_type": {"embedding": {"pooling": "cls"}}, "max_concurrent_requests": 50,
        "max_input_length": MAX_TOKENS, "max_batch_tokens": 16384, "max_batch_requests": 8,
        "max_client_batch_size": MAX_INPUTS, "auto_truncate": True, "tokenization_workers": info.json[
            "tokenization_workers"], "version": "1.0.0", "sha": None, "docker_label": None}
    assert info.json["tokenization_workers"] >= 1
    tei_error(client.simulate_get("/info"), 401, "Unauthorized")


@pytest.mark.parametrize("path", ["/embed", "/embed_sparse", "/embed_all"])
@pytest.mark.parametrize("body, status, error_type", [
    ({"inputs": []}, 400, "Empty"),
    ({"inputs": ""}, 400, "Empty"),
    ({"inputs": ["fine", "  "]}, 400, "Empty"),
    ({}, 422, "Validation"),
    ({"inputs": 5}, 422, "Validation"),
    ({"inputs": [101, 2003]}, 422, "Validation"),  # token ids
    ({"inputs": [[101, 2003]]}, 422, "Validation"),
    ({"inputs": "a", "prompt_name": "query"}, 422, "Validation"),
    ({"inputs": "a", "truncate": "yes"}, 422, "Validation"),
    ({"inputs": "a", "truncation_direction": "middle"}, 422, "Validation"),
    ({"inputs": "a", "truncation_direction": {}}, 422, "Validation"),
    ({"inputs": "a", "truncation_direction": ["left"]}, 422, "Validation"),
    ({"inputs": "word " * 200, "truncate": False}, 422, "Validation"),
    ({"inputs": ["a"] * (MAX_INPUTS + 1)}, 413, "Validation"),
])
def test_refusals_in_tei_shape(client, path, body, status, error_type):
    tei_error(post(client, path, body), status, error_type)


@pytest.mark.parametrize("raw, status, error_type", [
    (b"", 400, "Empty"), (b"{", 422, "Validation"), (b"[1]", 422, "Validation"), (b"x" * 5000, 413, "Validation")])
def test_unreadable_bodies_in_tei_shape(client, raw, status, error_type):
    tei_error(client.simulate_post("/embed", body=raw, headers=AUTH), status, error_type)


@pytest.mark.parametrize("field, value", [("normalize", False), ("normalize", None), ("dimensions", 0),
                                          ("dimensions", 1025)])
def test_what_bge_m3_cannot_honour_is_refused_with_a_reason(client, field, value):
    message = tei_error(post(client, "/embed", {"inputs": "a", field: value}), 422, "Validation")
    assert field in message
    assert post(client, "/embed", {"inputs": "a", "normalize": True, "dimensions": None, "prompt_name": None,
                                   "truncate": None}).status_code == 200


def test_left_truncation_keeps_the_end(client, engine):
    text = " ".join(f"w{i}" for i in range(200))
    post(client, "/embed", {"inputs": text, "truncation_direction": "right"})
    right = engine.calls[-1][0][0]
    post(client, "/embed", {"inputs": text, "truncation_direction": "Left"})
    left = engine.calls[-1][0][0]
    full = post(client, "/tokenize", {"input": text, "max_length": MAX_TOKENS, "truncate": True}).json["data"][0]
    assert full["truncated"] and len(right) == len(left) == MAX_TOKENS
    assert right.tolist() == full["ids"]
    assert left[0] == 0 and left[-1] == 2 and left[1] != right[1]
    assert left[-2] != right[-2]


def test_rerank_refusals(client):
    tei_error(post(client, "/rerank", {"query": "q", "texts": []}), 400, "Empty")
    tei_error(post(client, "/rerank", {"query": " ", "texts": ["a"]}), 400, "Empty")
    tei_error(post(client, "/rerank", {"query": "q", "texts": "a"}), 422, "Validation")
    tei_error(post(client, "/rerank", {"query": "q"}), 422, "Validation")
    tei_error(post(client, "/rerank", {"texts": ["a"]}), 422, "Validation")
    tei_error(post(client, "/rerank", {"query": "q", "texts": ["a"], "return_text": 1}), 422, "Validation")
    tei_error(post(client, "/rerank", {"query": "q", "texts": ["a"] * (MAX_INPUTS + 1)}), 413, "Validation")
    too_long = tei_error(post(client, "/rerank", {"query": "q", "texts": ["a", "w " * 200], "truncate": False}),
                         422, "Validation")
    assert "texts[1]" in too_long


@pytest.mark.parametrize("exc, status, error_type", [
    (EngineOverloaded("busy", 2.0), 429, "Overloaded"),
    (EngineUnavailable("restarting"), 503, "Unhealthy"),
    (EngineTimeout("slow"), 504, "Backend"),
    (EngineFailed("boom"), 424, "Backend"),
])
def test_engine_errors_in_tei_shape_and_statuses(client, engine, exc, status, error_type):
    engine.fail_with = exc
    result = post(client, "/embed", {"inputs": "a"})
    tei_error(result, status, error_type)
    if status in (429, 503):
        assert int(result.headers["retry-after"]) >= 1
    assert post(client, "/v1/embeddings", {"input": "a"}).json["error"]["type"] != error_type  # ours elsewhere


def test_auth_and_method_errors_in_tei_shape(client):
    result = client.simulate_post("/embed", json={"inputs": "a"}, headers={"Authorization": "Bearer wrong"})
    assert tei_error(result, 401, "Unauthorized") == "Invalid API token"
    assert result.headers["www-authenticate"] == "Bearer"
    tei_error(client.simulate_get("/embed_sparse", headers=AUTH), 405, "Validation")
    # Not a TEI path: this server's own shape.
    assert set(client.simulate_post("/embedd", json={}, headers=AUTH).json) == {"error", "detail"}


def test_a_loading_model_is_unhealthy(client, engine):
    engine.state = EngineState.LOADING
    result = post(client, "/embed", {"inputs": "a"})
    tei_error(result, 503, "Unhealthy")
    assert result.headers["retry-after"] == "1"
    assert client.simulate_get("/info", headers=AUTH).json["model_dtype"]


@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2], [3]], [[]]])
def test_token_id_arrays_on_v1_embeddings_name_the_langchain_setting(client, value):
    result = post(client, "/v1/embeddings", {"input": value})
    assert result.status_code == 400 and result.json["error"]["param"] == "input"
    assert "check_embedding_ctx_length=False" in result.json["detail"]


def test_the_original_services_words(client, make_settings, engine):
    assert client.simulate_get("/stats").json["detail"] == "Missing API token"
    assert client.simulate_get("/stats", headers={"Authorization": "Bearer nope"}).json["detail"] == "Invalid API token"
    assert client.simulate_get("/v1/models/gpt-4", headers=AUTH).json["detail"] == "Model gpt-4 not found"
    assert post(client, "/v1/embeddings", {"input": []}).json["detail"] == "Input cannot be empty"
    assert post(client, "/v1/embeddings", {"input": ["a", " "]}).json["detail"] == \
        "Text at index 1 is too short (minimum 1 characters)"
    assert post(client, "/v1/embeddings", {"input": ["a"] * 5}).json["detail"] == \
        "Too many texts in batch: 5 (maximum: 4)"
    assert post(client, "/v1/embeddings", {"input": "a", "return_dense": False, "return_sparse": False,
                                           "return_colbert": False}).json["detail"] == (
        "At least one vector type must be requested. Set return_dense=true, return_sparse=true, "
        "or return_colbert=true.")
    engine.fail_with = EngineOverloaded("too many requests are waiting for the model", 1.0)
    assert post(client, "/v1/embeddings", {"input": "a"}).json["detail"].startswith(
        "Server is currently handling maximum number of requests. Please try again later.")


def test_health_detailed(client, engine):
    assert client.simulate_get("/health/detailed").status_code == 401
    body = client.simulate_get("/health/detailed", headers=AUTH).json
    assert body["status"] == "ok" and body["model"] == {"name": "BAAI/bge-m3", "status": "loaded",
                                                          "device": "cpu", "dtype": "float32"}
    assert body["engines"] == ["ready"] and body["batching"]["enabled"] is True
    assert body["batching"]["stats"] == client.simulate_get("/stats", headers=AUTH).json["batching"]
    engine.state = EngineState.LOADING
    body = client.simulate_get("/health/detailed", headers=AUTH)
    assert body.status_code == 200 and body.json["status"] == "degraded"
    assert body.json["model"]["status"] == "not_loaded" and body.json["engines"] == ["loading"]


def test_docs_page_and_its_files_need_no_token(client):
    page = client.simulate_get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'url: "/openapi.json"' in page.text and "https://" not in page.text  # nothing from another host
    assert "persistAuthorization: false" in page.text  # a token typed in leaves with the tab
    for name, kind in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
        asset = client.simulate_get(f"/docs/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert f"/docs/{name}" in page.text and len(asset.content) > 10_000
    assert b'PACKAGE_VERSION:"5.' in client.simulate_get("/docs/swagger-ui-bundle.js").content  # reads OpenAPI 3.1
    assert client.simulate_get("/docs/index.html").status_code == 404
    assert client.simulate_get("/docs/..%2Fcore.py").status_code == 404


def test_cors_only_for_allowed_origins(make_settings, engine):
    app = testing.TestClient(create_app(make_settings(ALLOWED_ORIGINS="https://app.example, http://localhost:3000"),
                                        engine))
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    result = app.simulate_options("/v1/embeddings", headers=preflight)
    assert result.status_code == 200  # no token is asked of a preflight
    assert result.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in result.headers["access-control-allow-methods"]
    assert result.headers["access-control-allow-headers"] == "authorization,content-type"
    answer = app.simulate_post("/v1/embeddings", json={"input": "a"}, headers={**AUTH, "Origin": "https://app.example"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    assert "X-Request-ID" in answer.headers["access-control-expose-headers"]
    assert "Server-Timing" in answer.headers["access-control-expose-headers"]
    refused = app.simulate_post("/v1/embeddings", json={"input": "a"}, headers={"Origin": "http://localhost:3000"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = app.simulate_options("/v1/embeddings", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    # The answer depends on Origin: a cache must keep one per origin (and one for none).
    for response in (result, answer, refused, other, app.simulate_get("/health")):
        assert "Origin" in response.headers["vary"]
    everyone = testing.TestClient(create_app(make_settings(ALLOWED_ORIGINS="*"), engine))
    anyone = everyone.simulate_get("/health", headers={"Origin": "https://x.example"})
    assert anyone.headers["access-control-allow-origin"] == "*" and "vary" not in anyone.headers


@pytest.mark.parametrize("value, origins", [
    ("", ()), ("*", ("*",)), ("https://a.example,http://localhost:8080", ("https://a.example", "http://localhost:8080"))])
def test_allowed_origins_setting(make_settings, value, origins):
    assert make_settings(ALLOWED_ORIGINS=value).allowed_origins == origins


@pytest.mark.parametrize("value", ["https://a.example/path", "a.example", "*,https://a.example", "ftp://a.example"])
def test_a_malformed_origin_stops_the_server(make_settings, value):
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        make_settings(ALLOWED_ORIGINS=value)


def test_no_cors_headers_by_default(client):
    result = post(client, "/v1/embeddings", {"input": "a"}, headers={**AUTH, "Origin": "https://app.example"})
    assert result.status_code == 200 and "access-control-allow-origin" not in result.headers


def test_openapi_has_every_tei_operation(client):
    spec = client.simulate_get("/openapi.json").json
    for path in ("/embed", "/embed_sparse", "/embed_all", "/rerank", "/decode"):
        assert "post" in spec["paths"][path]
        assert spec["paths"][path]["post"]["responses"]["422"] == {"$ref": "#/components/responses/TEIError"}
    assert set(spec["paths"]["/"]) == {"get", "post"} and "get" in spec["paths"]["/info"]
    assert "get" in spec["paths"]["/health/detailed"] and spec["paths"]["/docs"]["get"]["security"] == []
    bodies = spec["paths"]["/tokenize"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert [body["required"] for body in bodies] == [["input"], ["inputs"]]
    assert spec["components"]["schemas"]["TEIError"]["properties"]["error_type"]["enum"][:6] == [
        "Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]


def test_dense_rows_are_float32_json(client):
    rows = np.array(post(client, "/embed", {"inputs": ["a", "b"]}).json, dtype=np.float32)
    assert rows.shape == (2, DIM)
