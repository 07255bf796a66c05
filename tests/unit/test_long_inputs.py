"""``chunk_long_inputs``: a text past max_length embedded in windows of at most max_length tokens,
each with its own <s> and </s>, and put back together in the web worker (embsvc/core/windows.py)."""

from __future__ import annotations

import numpy as np
import pytest
from falcon import testing

from embsvc.app import create_app
from embsvc.config import ConfigError
from embsvc.core.tokenizer import CHARS_PER_TOKEN, TextTokenizer
from embsvc.core.windows import largest_by_id, split
from gpu_pool import DEFAULT_OPTIONS, EmbeddingResult, JobOptions, Kind
from tests.unit.conftest import LIMITS, assert_error, post
from tests.unit.fake_engine import DIM, FakeEngine

LONG = " ".join(f"word{i}" for i in range(150))  # far more than LIMITS' 64 tokens


class VaryingEngine(FakeEngine):
    """Dense vectors that differ by input (a unit vector seeded by the ids), so that averaging shows."""

    def embed(self, ids: list[np.ndarray], kinds: Kind, unused_ids: np.ndarray,
              options: JobOptions = DEFAULT_OPTIONS) -> EmbeddingResult:
        result = super().embed(ids, kinds, unused_ids, options)
        if kinds & Kind.DENSE:
            dense = result._arrays["dense"]
            for row, x in enumerate(ids):
                dense[row] = seeded(x)
        return result


def seeded(ids: np.ndarray) -> np.ndarray:
    v = np.random.default_rng(int(ids.sum())).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def engine() -> VaryingEngine:
    return VaryingEngine()


def windows_of(engine: FakeEngine) -> list[np.ndarray]:
    ids, _ = engine.calls[-1]
    return ids


def test_split_keeps_every_token_once_in_windows_with_their_own_specials():
    ids = np.array([0, *range(10, 23), 2], dtype=np.int32)  # <s>, 13 tokens, </s>
    windows = split(ids, 6)
    assert [w.tolist() for w in windows] == [[0, 10, 11, 12, 13, 2], [0, 14, 15, 16, 17, 2],
                                            [0, 18, 19, 20, 21, 2], [0, 22, 2]]
    assert split(ids, 15)[0] is ids and len(split(ids, 14)) == 2


def test_sparse_keeps_each_ids_largest_weight_over_the_windows():
    ids, weights = largest_by_id(np.array([5, 3, 5, 9, 3]), np.array([0.1, 0.2, 0.4, 0.3, 0.1], dtype=np.float32))
    assert ids.tolist() == [3, 5, 9] and weights.tolist() == pytest.approx([0.2, 0.4, 0.3])


def test_a_long_text_is_embedded_in_windows_and_put_back_together(client, engine):
    body = post(client, "/v1/embeddings", {"input": ["short text", LONG], "chunk_long_inputs": True}).json
    sent = windows_of(engine)
    assert all(len(w) <= 64 for w in sent) and len(sent) >= 4
    short, windows = sent[0], sent[1:]
    assert all(w[0] == 0 and w[-1] == 2 for w in windows)
    # Every token of the text once, in order.
    inner = np.concatenate([w[1:-1] for w in windows])
    assert len(inner) == sum(len(w) - 2 for w in windows)
    long_item = body["data"][1]
    weights = np.array([len(w) for w in windows], dtype=np.float32)
    mean = weights @ np.stack([seeded(w) for w in windows])
    np.testing.assert_allclose(long_item["embedding"], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    # Sparse: each id's largest weight (the fake's weight is id / 1000), special tokens dropped.
    assert long_item["sparse_embedding"] == {str(t): pytest.approx(t / 1000) for t in inner.tolist() if t > 3}
    # ColBERT: each window's rows (all but its <s>) in order.
    assert len(long_item["colbert_embedding"]) == sum(len(w) - 1 for w in windows)
    assert body["data"][0]["embedding"] == pytest.approx(seeded(short).tolist())
    total = sum(len(w) for w in sent)
    assert body["usage"] == {"prompt_tokens": total, "total_tokens": total}


def test_windows_follow_max_length(client, engine):
    post(client, "/v1/embeddings", {"input": LONG, "chunk_long_inputs": True, "max_length": 20})
    sent = windows_of(engine)
    assert max(len(w) for w in sent) == 20 and all(len(w) <= 20 for w in sent)


@pytest.mark.parametrize("extra", [{}, {"encoding_format": "base64"}, {"return_sparse_tokens": True},
                                   {"encoding_format": "base64", "embedding_dtype": "float16"}])
def test_texts_within_the_limit_give_the_same_answer_with_the_flag_on_or_off(client, extra):
    texts = ["hello world", "a second, longer text with some more words in it"]
    off = post(client, "/v1/embeddings", {"input": texts, **extra})
    on = post(client, "/v1/embeddings", {"input": texts, "chunk_long_inputs": True, **extra})
    assert on.status_code == 200 and on.content == off.content


def test_without_the_flag_a_long_text_is_truncated_as_before(client, engine):
    body = post(client, "/v1/embeddings", {"input": LONG}).json
    assert [len(w) for w in windows_of(engine)] == [64]
    assert body["usage"]["prompt_tokens"] == 64
    assert_error(post(client, "/v1/embeddings", {"input": LONG, "truncate": False}), 400, param="input")


def test_with_the_flag_truncate_false_is_no_refusal(client, engine):
    result = post(client, "/v1/embeddings", {"input": LONG, "chunk_long_inputs": True, "truncate": False})
    assert result.status_code == 200 and len(windows_of(engine)) > 1


def test_the_setting_gives_the_default(make_settings, engine):
    client = testing.TestClient(create_app(make_settings(**LIMITS, CHUNK_LONG_INPUTS="true"), engine))
    post(client, "/v1/embeddings", {"input": LONG})
    assert len(windows_of(engine)) > 1
    post(client, "/v1/embeddings", {"input": LONG, "chunk_long_inputs": False})
    assert len(windows_of(engine)) == 1


@pytest.mark.parametrize("value", ["yes", "2"])
def test_a_malformed_setting_stops_the_server(make_settings, value):
    with pytest.raises(ConfigError, match="CHUNK_LONG_INPUTS"):
        make_settings(CHUNK_LONG_INPUTS=value)


def test_past_max_request_tokens_a_413_and_nothing_computed(make_settings, engine):
    client = testing.TestClient(create_app(make_settings(**LIMITS, MAX_REQUEST_TOKENS="100"), engine))
    error = assert_error(post(client, "/v1/embeddings", {"input": LONG, "chunk_long_inputs": True}), 413,
                         param="input")
    assert "MAX_REQUEST_TOKENS 100" in error["error"]["message"]
    assert not engine.calls
    assert post(client, "/v1/embeddings", {"input": LONG[:150], "chunk_long_inputs": True}).status_code == 200


def test_the_character_bound_follows_the_request_tokens_not_one_window(make_settings, engine):
    settings = make_settings(**{**LIMITS, "MAX_REQUEST_BYTES": "65536"}, MAX_REQUEST_TOKENS="2000")
    client = testing.TestClient(create_app(settings, engine))
    # Past 32 × max_length characters (one window's bound): still tokenized whole, every token embedded.
    text = "word " * (CHARS_PER_TOKEN * 64 // 5 + 100)
    assert post(client, "/v1/embeddings", {"input": text, "chunk_long_inputs": True}).status_code == 200
    whole = TextTokenizer(settings.model_path).encode([text])[0]
    assert np.concatenate([w[1:-1] for w in windows_of(engine)]).tolist() == whole[1:-1].tolist()
    # Past 32 × MAX_REQUEST_TOKENS characters in all: a 413 before anything is tokenized or computed.
    calls = len(engine.calls)
    error = assert_error(post(client, "/v1/embeddings", {"input": ["x" * 60000, "y" * 4001],
                                                          "chunk_long_inputs": True}), 413, param="input")
    assert "64001 characters" in error["error"]["message"] and len(engine.calls) == calls


@pytest.mark.parametrize("path", ["/embed", "/embed_sparse", "/embed_all"])
def test_tei_routes_take_the_flag(client, engine, path):
    off = post(client, path, {"inputs": ["hello world"]})
    on = post(client, path, {"inputs": ["hello world"], "chunk_long_inputs": True})
    assert on.content == off.content
    result = post(client, path, {"inputs": LONG, "chunk_long_inputs": True})
    assert result.status_code == 200 and len(result.json) == 1 and len(windows_of(engine)) > 1
    assert post(client, path, {"inputs": LONG, "chunk_long_inputs": "yes"}).status_code == 422


def test_tei_sparse_and_colbert_of_a_long_text(client, engine):
    sparse = post(client, "/embed_sparse", {"inputs": LONG, "chunk_long_inputs": True}).json[0]
    inner = np.concatenate([w[1:-1] for w in windows_of(engine)])
    assert [v["index"] for v in sparse] == sorted(set(inner.tolist()) - {0, 1, 2, 3})
    rows = post(client, "/embed_all", {"inputs": LONG, "chunk_long_inputs": True}).json[0]
    assert len(rows) == sum(len(w) - 1 for w in windows_of(engine))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_the_flag_must_be_a_boolean(client, value):
    assert_error(post(client, "/v1/embeddings", {"input": "q", "chunk_long_inputs": value}), 400,
                 param="chunk_long_inputs")


def test_the_openapi_document_has_the_flag_with_its_default(make_settings, engine):
    client = testing.TestClient(create_app(make_settings(**LIMITS, CHUNK_LONG_INPUTS="1"), engine))
    paths = client.simulate_get("/openapi.json").json["paths"]
    for path in ("/v1/embeddings", "/embed", "/embed_sparse", "/embed_all"):
        fields = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert fields["chunk_long_inputs"]["default"] is True, path
