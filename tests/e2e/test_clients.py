"""The official ``openai`` package against the real server: float, base64 (its default), the
three kinds through ``extra_body``, errors as its typed exceptions."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest

from tests.e2e.conftest import TOKEN, embed

TEXTS = ["Текст для векторизации", "Еще один текст", "BGE-M3 gives dense, sparse and ColBERT vectors"]


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)


def reference(server, texts: list[str], **body: object) -> list[dict]:
    """What the server answers in floats to a plain HTTP client."""
    return embed(server, {"input": texts, **body})["data"]


def f32(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def from_base64(text: str, dim: int = 32) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(-1, dim)


def test_default_call_gives_the_dense_vectors(server, client):
    # openai asks for base64 unless told otherwise, and decodes ``embedding`` itself.
    ref = reference(server, TEXTS)
    result = client.embeddings.create(model="bge-m3", input=TEXTS)
    assert result.model == "BAAI/bge-m3" and result.object == "list"
    assert [item.index for item in result.data] == [0, 1, 2]
    for item, want in zip(result.data, ref, strict=True):
        assert isinstance(item.embedding, list) and len(item.embedding) == 32
        np.testing.assert_array_equal(f32(item.embedding), f32(want["dense_embedding"]))
        extra = item.model_extra
        assert extra["sparse_embedding"] == pytest.approx(want["sparse_embedding"], rel=1e-6)
        # The other base64 fields stay strings: decode them the same way.
        np.testing.assert_array_equal(from_base64(extra["colbert_embedding"]), f32(want["colbert_embedding"]))
        np.testing.assert_array_equal(from_base64(extra["dense_embedding"])[0], f32(want["dense_embedding"]))
    n_tokens = sum(len(item["colbert_embedding"]) + 1 for item in ref)
    assert result.usage.prompt_tokens == result.usage.total_tokens == n_tokens


def test_float_format(server, client):
    ref = reference(server, TEXTS[:1])[0]
    item = client.embeddings.create(model="BAAI/bge-m3", input=TEXTS[0], encoding_format="float").data[0]
    np.testing.assert_array_equal(f32(item.embedding), f32(ref["dense_embedding"]))
    np.testing.assert_array_equal(f32(item.model_extra["colbert_embedding"]), f32(ref["colbert_embedding"]))
    assert item.model_extra["sparse_embedding"] == pytest.approx(ref["sparse_embedding"], rel=1e-6)


def test_base64_format_is_little_endian_float32(server, client):
    ref = reference(server, TEXTS[1:2])[0]
    item = client.embeddings.create(model="bge-m3", input=[TEXTS[1]], encoding_format="base64").data[0]
    assert isinstance(item.embedding, str)
    np.testing.assert_array_equal(from_base64(item.embedding)[0], f32(ref["dense_embedding"]))


@pytest.mark.parametrize(("kinds", "types"), [
    ({"return_sparse": True, "return_colbert": False}, ["dense", "sparse"]),
    ({"return_dense": False, "return_sparse": True, "return_colbert": False}, ["sparse"]),
    ({"return_sparse": False, "return_colbert": True}, ["dense", "colbert"]),
])
def test_extra_body_chooses_the_kinds(server, client, kinds, types):
    result = client.embeddings.create(model="bge-m3", input=TEXTS[:2], encoding_format="float", extra_body=kinds,
                                      user="someone")
    assert result.model_extra["embedding_types"] == types
    for item, want in zip(result.data, reference(server, TEXTS[:2], **kinds), strict=True):
        extra = item.model_extra
        if "dense" in types:
            np.testing.assert_array_equal(f32(item.embedding), f32(want["dense_embedding"]))
        else:
            assert item.embedding is None and extra["dense_embedding"] is None
        assert (extra["sparse_embedding"] is not None) == ("sparse" in types)
        assert (extra["colbert_embedding"] is not None) == ("colbert" in types)


def test_sparse_only_with_the_default_encoding(client):
    # No dense vector to decode: the client must not trip over the missing ``embedding``.
    result = client.embeddings.create(model="bge-m3", input="lexical only",
                                      extra_body={"return_dense": False, "return_colbert": False})
    item = result.data[0]
    assert item.embedding is None and item.model_extra["sparse_embedding"]


def test_errors_are_the_clients_typed_exceptions(server, client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert caught.value.body["type"] == "not_found_error" and caught.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="bge-m3", input=["fine", "   "])
    assert caught.value.body["param"] == "input"
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model="bge-m3", input="x")


def test_models_and_request_id(client):
    assert [m.id for m in client.models.list().data] == ["BAAI/bge-m3"]
    assert client.models.retrieve("bge-m3").id == "BAAI/bge-m3"
    raw = client.embeddings.with_raw_response.create(model="bge-m3", input="x",
                                                     extra_headers={"X-Request-ID": "openai-call-1"})
    assert raw.headers["x-request-id"] == "openai-call-1"
    assert len(raw.parse().data) == 1
