"""OpenAI's ``dimensions`` on /v1/embeddings: the dense vector's first n components, normalised
again, in every encoding; sparse and ColBERT untouched."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.unit.conftest import assert_error, post
from tests.unit.fake_engine import DIM

TEXTS = ["hello world", "another text"]


def shortened(full: list[float], n: int) -> np.ndarray:
    v = np.asarray(full[:n], dtype=np.float32)
    return v / np.linalg.norm(v)


def test_the_first_n_components_normalised_again(client):
    full = post(client, "/v1/embeddings", {"input": TEXTS}).json["data"]
    body = post(client, "/v1/embeddings", {"input": TEXTS, "dimensions": 8}).json
    for whole, item in zip(full, body["data"], strict=True):
        assert len(item["embedding"]) == 8 and item["dense_embedding"] == item["embedding"]
        np.testing.assert_allclose(item["embedding"], shortened(whole["embedding"], 8), rtol=1e-6)
        assert np.linalg.norm(item["embedding"]) == pytest.approx(1.0, abs=1e-6)
        # Sparse and ColBERT are what they are without it.
        assert item["sparse_embedding"] == whole["sparse_embedding"]
        assert item["colbert_embedding"] == whole["colbert_embedding"]
    assert body["usage"] == post(client, "/v1/embeddings", {"input": TEXTS}).json["usage"]


@pytest.mark.parametrize(("dtype", "wire"), [("float32", "<f4"), ("float16", "<f2")])
def test_base64_payloads_are_shortened_too(client, dtype, wire):
    full = post(client, "/v1/embeddings", {"input": TEXTS}).json["data"]
    body = post(client, "/v1/embeddings", {"input": TEXTS, "dimensions": 5, "encoding_format": "base64",
                                           "embedding_dtype": dtype}).json
    for whole, item in zip(full, body["data"], strict=True):
        dense = np.frombuffer(base64.b64decode(item["embedding"]), dtype=wire)
        assert dense.shape == (5,)
        np.testing.assert_allclose(dense, shortened(whole["embedding"], 5), rtol=1e-3)
        colbert = np.frombuffer(base64.b64decode(item["colbert_embedding"]), dtype=wire).reshape(-1, DIM)
        np.testing.assert_allclose(colbert, whole["colbert_embedding"], rtol=1e-3)


@pytest.mark.parametrize("extra", [{}, {"dimensions": None}, {"dimensions": DIM}])
def test_absent_null_or_whole_is_the_full_vector_unchanged(client, extra):
    plain = post(client, "/v1/embeddings", {"input": TEXTS})
    assert post(client, "/v1/embeddings", {"input": TEXTS, **extra}).content == plain.content


def test_a_whole_float_is_a_whole_number(client):
    assert len(post(client, "/v1/embeddings", {"input": "q", "dimensions": 4.0}).json["data"][0]["embedding"]) == 4


def test_with_long_inputs_in_windows(client):
    text = " ".join(f"word{i}" for i in range(150))
    item = post(client, "/v1/embeddings", {"input": text, "dimensions": 6, "chunk_long_inputs": True}).json["data"][0]
    assert len(item["embedding"]) == 6 and np.linalg.norm(item["embedding"]) == pytest.approx(1.0, abs=1e-6)


def test_without_dense_it_changes_nothing(client):
    body = {"input": TEXTS, "return_dense": False}
    assert post(client, "/v1/embeddings", {**body, "dimensions": 3}).content == post(client, "/v1/embeddings",
                                                                                      body).content


@pytest.mark.parametrize("value", [0, -1, 1025, 2.5, "256", True, [256]])
def test_out_of_range_or_not_a_whole_number_is_a_400_naming_the_field(client, value):
    error = assert_error(post(client, "/v1/embeddings", {"input": "q", "dimensions": value}), 400,
                         param="dimensions")
    assert "1 to 1024" in error["error"]["message"]


def test_1024_is_accepted(client):
    assert post(client, "/v1/embeddings", {"input": "q", "dimensions": 1024}).status_code == 200


def test_the_openapi_document_bounds_it(client):
    paths = client.simulate_get("/openapi.json").json["paths"]
    field = paths["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "dimensions"]
    assert (field["minimum"], field["maximum"]) == (1, 1024)


def test_tei_embed_takes_dimensions_too(client):
    full = post(client, "/embed", {"inputs": TEXTS}).json
    short = post(client, "/embed", {"inputs": TEXTS, "dimensions": 8}).json
    for whole, vector in zip(full, short, strict=True):
        np.testing.assert_allclose(vector, shortened(whole, 8), rtol=1e-6)
