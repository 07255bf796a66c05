"""The cross-encoder beside bge-m3, through falcon's TestClient with the fake engine (whose logit
for a pair is its length in tokens less 10, over 10): which model ranks each rerank route, the pairs the
engine is sent, the scores, and where the second model shows (/v1/models, /info, /stats, /metrics,
/openapi.json)."""

from __future__ import annotations

import numpy as np
import pytest
from falcon import testing
from prometheus_client.parser import text_string_to_metric_families

from embsvc.app import create_app
from embsvc.core import rerank_pairs
from embsvc.core.scoring import sigmoid
from embsvc.openapi import build_openapi
from gpu_pool import EngineSnapshot, EngineState, EngineStats, Kind, ModelNotServed
from tests.unit.conftest import AUTH, LIMITS, assert_error, post

RERANKER = "BAAI/bge-reranker-v2-m3"
DOCS = ["a short one", "a somewhat longer document about things", "mid length text", "x"]


@pytest.fixture
def settings(make_settings, tiny_model):
    # The tiny bge-m3 folder stands in for the cross-encoder's: the web side reads only its tokenizer.
    return make_settings(**LIMITS, RERANKER_PATH=str(tiny_model))


@pytest.fixture
def client(settings, engine) -> testing.TestClient:
    engine.reranker = {"name": "bge-reranker-v2-m3", "path": "/models/bge-reranker-v2-m3", "max_positions": 8194,
                       "dtype": "float32"}
    return testing.TestClient(create_app(settings, engine))


@pytest.fixture
def pairs(tiny_model):
    tokenizer = rerank_pairs.load_tokenizer(tiny_model)
    return lambda query, documents, **kw: [ids.tolist() for ids in rerank_pairs.pair_ids(
        tokenizer, [(query, d) for d in documents], **kw)]


def logits(ids: list[list[int]]) -> np.ndarray:
    """The fake engine's logits."""
    return np.array([(len(x) - 10.0) / 10 for x in ids], dtype=np.float32)


@pytest.mark.parametrize("model", ["bge-reranker-v2-m3", RERANKER])
@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_the_cross_encoder_ranks_when_named(client, engine, pairs, path, model):
    body = post(client, path, {"model": model, "query": "what is it", "documents": DOCS, "top_n": 3,
                               "return_documents": True}).json
    sent = [ids.tolist() for ids in engine.rerank_calls[-1]]
    assert sent == pairs("what is it", DOCS)  # FlagReranker's pairs, its max_length 512
    relevance = sigmoid(logits(sent))
    best = np.argsort(-relevance, kind="stable")[:3].tolist()
    assert [r["index"] for r in body["results"]] == best
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(relevance[best].tolist())
    assert all(0 < r["relevance_score"] < 1 for r in body["results"])
    assert [r["document"]["text"] for r in body["results"]] == [DOCS[i] for i in best]
    assert body["model"] == RERANKER and "mode" not in body
    assert body["usage"]["total_tokens"] == sum(len(x) for x in sent)
    assert not engine.score_calls


@pytest.mark.parametrize("model", [None, "bge-m3", "BAAI/bge-m3"])
def test_bge_m3_ranks_when_named_or_when_no_model_is(client, engine, model):
    body = post(client, "/v1/rerank", {"query": "q", "documents": DOCS, **({"model": model} if model else {})}).json
    assert body["model"] == "BAAI/bge-m3" and body["mode"] == "colbert+sparse+dense"
    assert engine.score_calls and not engine.rerank_calls


def test_max_length_bounds_the_pair(client, engine, pairs):
    long = "word " * 40
    post(client, "/v1/rerank", {"model": RERANKER, "query": "q", "documents": [long], "max_length": 20})
    assert [x.tolist() for x in engine.rerank_calls[-1]] == pairs("q", [long], max_length=20)
    assert len(engine.rerank_calls[-1][0]) == 20


@pytest.mark.parametrize("body, status, param", [
    ({"mode": "dense"}, 400, "mode"),
    ({"weights": [1, 0, 0]}, 400, "weights"),
    ({"top_n": 0}, 400, "top_n"),
    ({"documents": []}, 400, "documents"),
    ({"documents": ["a"] * 5}, 413, "documents"),
    ({"truncate": False, "documents": ["word " * 70]}, 400, "documents"),
])
def test_cross_encoder_refusals(client, engine, body, status, param):
    result = post(client, "/v1/rerank", {"model": RERANKER, "query": "q", "documents": ["a"], **body})
    assert_error(result, status, param=param)
    assert not engine.calls


def test_an_unknown_model_is_a_404_naming_both_served_ones(client):
    error = assert_error(post(client, "/v1/rerank", {"model": "rerank-english-v3.0", "query": "q", "documents": ["a"]}),
                         404, "not_found_error", "model")
    assert "'BAAI/bge-m3'" in error["detail"] and f"'{RERANKER}'" in error["detail"]


def test_the_cross_encoder_does_not_embed_or_score(client, engine):
    for path, body in (("/v1/embeddings", {"input": "a"}), ("/v1/score", {"query": "q", "documents": ["a"]})):
        error = assert_error(post(client, path, {**body, "model": "bge-reranker-v2-m3"}), 400, param="model")
        assert "cross-encoder" in error["detail"] and "/v1/rerank" in error["detail"]
    assert not engine.calls


def test_naming_the_cross_encoder_without_one_is_a_clear_404(make_settings, engine):
    client = testing.TestClient(create_app(make_settings(**LIMITS), engine))  # RERANKER_PATH=none
    error = assert_error(post(client, "/v1/rerank", {"model": "bge-reranker-v2-m3", "query": "q", "documents": ["a"]}),
                         404, "not_found_error", "model")
    assert "no cross-encoder" in error["detail"] and "'BAAI/bge-m3'" in error["detail"]
    assert not engine.calls
    # TEI's /rerank ranks with bge-m3's scores there.
    assert post(client, "/rerank", {"query": "q", "texts": ["a", "b"]}).status_code == 200
    assert engine.score_calls and not engine.rerank_calls


# -- TEI's /rerank -------------------------------------------------------------------------

def test_tei_rerank_uses_the_cross_encoder(client, engine, pairs):
    texts = ["one", "two words here", "three"]
    ranks = post(client, "/rerank", {"query": "q", "texts": texts, "return_text": True}).json
    sent = [x.tolist() for x in engine.rerank_calls[-1]]
    assert sent == pairs("q", texts)
    relevance = sigmoid(logits(sent))
    best = np.argsort(-relevance, kind="stable").tolist()
    assert [r["index"] for r in ranks] == best and [r["text"] for r in ranks] == [texts[i] for i in best]
    assert [r["score"] for r in ranks] == pytest.approx(relevance[best].tolist())
    raw = post(client, "/rerank", {"query": "q", "texts": texts, "raw_scores": True}).json
    assert [r["score"] for r in raw] == pytest.approx(logits(sent)[best].tolist())
    assert not engine.score_calls


def test_tei_rerank_truncation(client, engine, pairs):
    long = " ".join(f"w{i}" for i in range(400))
    post(client, "/rerank", {"query": "q", "texts": [long]})
    right = engine.rerank_calls[-1][0]
    # A pair holds MAX_TOKENS (64 here) tokens at most where that is below FlagReranker's 512.
    assert right.tolist() == pairs("q", [long], max_length=64)[0] and len(right) == 64
    post(client, "/rerank", {"query": "q", "texts": [long], "truncation_direction": "left"})
    left = engine.rerank_calls[-1][0]
    # The text's end is kept: its last words are those of the whole text.
    tail = pairs("q", ["w398 w399"], max_length=64)[0][-4:]
    assert len(left) <= 64 and left[-4:].tolist() == tail and right[-4:].tolist() != tail
    result = post(client, "/rerank", {"query": "q", "texts": ["a", long], "truncate": False})
    assert result.status_code == 422 and "texts[1]" in result.json["error"]
    assert result.json["error_type"] == "Validation"


# -- where the second model shows ------------------------------------------------------------

def test_models_lists_both(client):
    listing = client.simulate_get("/v1/models", headers=AUTH).json["data"]
    assert [(m["id"], m["type"], m["aliases"]) for m in listing] == [
        ("BAAI/bge-m3", "embedding", ["bge-m3"]), (RERANKER, "reranker", ["bge-reranker-v2-m3"])]
    for name in (RERANKER, "bge-reranker-v2-m3"):
        assert client.simulate_get(f"/v1/models/{name}", headers=AUTH).json["id"] == RERANKER


def test_info_and_health_name_the_cross_encoder(client):
    info = client.simulate_get("/info", headers=AUTH).json
    assert info["model_id"] == "BAAI/bge-m3"
    assert info["reranker"]["model_id"] == RERANKER and "reranker" in info["reranker"]["model_type"]
    # A pair's tokens: FlagReranker's 512, or MAX_TOKENS (64 here) where that is less.
    assert info["reranker"]["max_input_length"] == 64 and info["reranker"]["model_dtype"] == "float32"
    detailed = client.simulate_get("/health/detailed", headers=AUTH).json
    assert detailed["reranker"] == {"name": RERANKER, "status": "loaded", "device": "cpu", "dtype": "float32"}
    assert client.simulate_get("/").json["reranker"] == RERANKER


def test_stats_and_metrics_count_each_model(client, engine):
    stats = EngineStats(processed_requests=5, batches=4, batched_inputs=12, tokens=300, processing_seconds=2.0,
                        rerank_requests=2, rerank_batches=1, rerank_inputs=4, rerank_tokens=100,
                        rerank_processing_seconds=0.5)
    engine.snapshot = lambda: [EngineSnapshot(0, "cpu", EngineState.READY, 0, 0, stats)]
    models = client.simulate_get("/stats", headers=AUTH).json["models"]
    assert models["BAAI/bge-m3"]["processed_requests"] == 3 and models["BAAI/bge-m3"]["tokens_processed"] == 200
    assert models[RERANKER] == {"processed_requests": 2, "batches": 1, "inputs": 4, "tokens_processed": 100,
                                "average_processing_time": 0.5}
    samples = {(s.name, s.labels.get("model")): s.value
               for family in text_string_to_metric_families(client.simulate_get("/metrics").text)
               for s in family.samples if "model" in s.labels}
    assert samples[("embsvc_engine_model_requests_total", RERANKER)] == 2
    assert samples[("embsvc_engine_model_requests_total", "BAAI/bge-m3")] == 3
    assert samples[("embsvc_engine_model_tokens_total", RERANKER)] == 100


def test_openapi_offers_the_cross_encoder_where_served(settings, make_settings):
    for served, names in ((settings, {"bge-reranker-v2-m3", RERANKER}), (make_settings(), set())):
        document = build_openapi(served)
        rerank = document["paths"]["/v1/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        model = rerank["properties"]["model"]["anyOf"][0]["enum"]
        assert set(model) == {"BAAI/bge-m3", "bge-m3", *names}
        ids = document["paths"]["/v1/models/{model_id}"]["parameters"][0]["schema"]["enum"]
        assert set(ids) == {"BAAI/bge-m3", "bge-m3", *names}


def test_the_fake_engine_was_asked_for_pairs(client, engine):
    post(client, "/v1/rerank", {"model": RERANKER, "query": "q", "documents": ["a"]})
    assert engine.calls[-1][1] == Kind.RERANK


def test_engines_without_the_cross_encoder_answer_404(client, engine):
    engine.fail_with = ModelNotServed("no cross-encoder is served")
    error = assert_error(post(client, "/v1/rerank", {"model": RERANKER, "query": "q", "documents": ["a"]}),
                         404, "not_found_error", "model")
    assert "no cross-encoder" in error["detail"]
