"""Edge cases that fuzzing (tests/e2e/test_fuzz.py) turned up, pinned down without a server."""

from __future__ import annotations

import numpy as np
import pytest

from embsvc.api.embeddings import parse_embedding_request
from embsvc.api.scoring import parse_rerank_request
from embsvc.config import load_settings
from embsvc.errors import InvalidRequest
from embsvc.openapi import build_openapi
from gpu_pool import m3math as scoring


@pytest.fixture
def settings():
    return load_settings({"API_TOKEN": "t", "MODEL_PATH": ".", "RERANKER_PATH": "none"}, env_file=None)


def test_huge_weights_give_the_same_finite_scores():
    raw = np.array([[0.5, 3.0, 0.25], [0.1, 0.0, 0.9]])
    usual = scoring.combine(raw, (0.4, 0.2, 0.4))
    huge = scoring.combine(raw, (1.6e308, 0.8e308, 1.6e308))  # their sum overflows a float
    assert np.isfinite(huge).all()
    np.testing.assert_allclose(huge, usual, rtol=1e-6)


def test_weights_of_far_apart_sizes_give_finite_scores():
    """What the fuzzer found: scaled by the largest (7e307), the dense and sparse weights both
    vanish, and sparse+dense was 0 / 0 (answered as null). Each mean has its own scale now."""
    raw = np.array([[0.5, 3.0, 0.25], [0.1, 0.0, 0.9]])
    scores = scoring.combine(raw, (2.2e-311, 1e-118, 7e307))
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores[:, 3], raw[:, 1], rtol=1e-6)  # sparse+dense: all sparse's weight
    np.testing.assert_allclose(scores[:, 4], raw[:, 2], rtol=1e-6)  # the three: all ColBERT's


def test_max_tokens_per_doc_is_checked_even_beside_max_length(settings):
    base = {"query": "q", "documents": ["d"]}
    with pytest.raises(InvalidRequest) as refused:
        parse_rerank_request({**base, "max_length": 10, "max_tokens_per_doc": 0}, settings)
    assert refused.value.param == "max_tokens_per_doc"
    assert parse_rerank_request({**base, "max_tokens_per_doc": 7}, settings).scoring.max_length == 7
    assert parse_rerank_request({**base, "max_length": 10, "max_tokens_per_doc": 7}, settings).scoring.max_length == 10


def test_integral_floats_are_integers_and_user_may_be_null(settings):
    request = parse_embedding_request({"input": "a", "max_length": 512.0, "user": None}, settings)
    assert request.max_length == 512 and isinstance(request.max_length, int)
    with pytest.raises(InvalidRequest):
        parse_embedding_request({"input": "a", "max_length": 512.5}, settings)


def test_the_document_says_what_the_server_accepts(settings):
    document = build_openapi(settings)
    embeddings = document["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert embeddings["properties"]["user"]["type"] == ["string", "null"]
    model_id = document["paths"]["/v1/models/{model_id}"]["parameters"][0]["schema"]
    assert model_id["enum"] == list(settings.model_names())
    rerank = document["paths"]["/v1/rerank"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"type": "null"} in rerank["properties"]["truncate"]["anyOf"]
    assert None in rerank["properties"]["mode"]["enum"]
    assert rerank["properties"]["max_tokens_per_doc"]["maximum"] == settings.max_tokens
