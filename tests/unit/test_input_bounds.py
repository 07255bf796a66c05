"""The work one small request can ask for is bounded: a text is tokenized up to
CHARS_PER_TOKEN × max_length characters (past it, cut; with truncate false, a 400), and a
/tokenize answer holds at most TOKENIZE_ANSWER_TOKENS × MAX_TOKENS tokens (past it, a 413);
each refusal names the limit."""

from __future__ import annotations

import random

import pytest
from falcon import testing

from embsvc.app import create_app
from embsvc.core.tokenizer import CHARS_PER_TOKEN, TOKENIZE_ANSWER_TOKENS, TextTokenizer, cut, within_chars
from embsvc.errors import InvalidRequest
from tests.unit.conftest import LIMITS, assert_error, post

MAX_TOKENS = int(LIMITS["MAX_TOKENS"])
BOUND = CHARS_PER_TOKEN * MAX_TOKENS
WORDS = ["model", "embedding", "Привет", "naïve", "東京", "retrieval", "x", "déjà", "123", "vector's"]


def prose(chars: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    text = ""
    while len(text) < chars:
        text += rng.choice(WORDS) + rng.choice([" ", " ", ", ", ". "])
    return text[:chars]


@pytest.fixture
def roomy(make_settings, engine) -> testing.TestClient:
    """Bodies large enough to reach the bounds."""
    return testing.TestClient(create_app(make_settings(**{**LIMITS, "MAX_REQUEST_BYTES": "65536",
                                                         "MAX_INPUTS": "256"}), engine))


@pytest.fixture
def tokenizer(tiny_model) -> TextTokenizer:
    return TextTokenizer(tiny_model)


def test_a_text_within_the_bound_is_left_whole():
    assert within_chars(["a" * BOUND], MAX_TOKENS, False) == ["a" * BOUND]


@pytest.mark.parametrize("direction, kept", [("right", "ab"), ("left", "yz")])
def test_a_longer_text_is_cut_on_the_side_truncation_drops(direction, kept):
    text = "ab" + "-" * (CHARS_PER_TOKEN - 4) + "yz"  # 32 characters: twice the bound of max_length 0.5
    cut_text = within_chars([text + "!" * 10], 1, True, direction=direction)[0]
    assert len(cut_text) == CHARS_PER_TOKEN and (cut_text.startswith(kept) if direction == "right"
                                                 else cut_text.endswith("!" * 10))


def test_with_truncation_off_a_longer_text_is_a_400_naming_the_limit():
    with pytest.raises(InvalidRequest, match=f"more than the limit of {BOUND} .32 per token of max_length 64"):
        within_chars(["ok", "a" * (BOUND + 1)], MAX_TOKENS, False)


@pytest.mark.parametrize("direction", ["right", "left"])
@pytest.mark.parametrize("max_length", [8, MAX_TOKENS])
def test_the_cut_keeps_the_tokens_truncation_keeps(tokenizer, direction, max_length):
    text = prose(20 * CHARS_PER_TOKEN * max_length)
    whole = cut(tokenizer.encode([text]), max_length, True, direction=direction)[0]
    bounded = within_chars([text], max_length, True, direction=direction)
    assert len(bounded[0]) == CHARS_PER_TOKEN * max_length < len(text)
    assert cut(tokenizer.encode(bounded), max_length, True, direction=direction)[0].tolist() == whole.tolist()


def test_embeddings_of_a_text_past_the_bound(roomy, engine, tokenizer):
    text = prose(BOUND + 1500)
    body = post(roomy, "/v1/embeddings", {"input": text}).json
    ids, _ = engine.calls[-1]
    assert body["usage"]["prompt_tokens"] == MAX_TOKENS
    assert ids[0].tolist() == cut(tokenizer.encode([text]), MAX_TOKENS, True)[0].tolist()
    refused = post(roomy, "/v1/embeddings", {"input": text, "truncate": False})
    assert f"input[0] has {len(text)} characters, more than the limit of {BOUND}" in assert_error(
        refused, 400, param="input")["detail"]


def test_tei_embed_and_rerank_are_bounded_the_same_way(client):
    text = prose(BOUND + 10)
    assert post(client, "/embed", {"inputs": text}).status_code == 200
    refused = post(client, "/embed", {"inputs": ["a", text], "truncate": False})
    assert refused.status_code == 422 and "inputs[1] has" in refused.json["error"]  # TEI's status for it
    refused = post(client, "/v1/rerank", {"query": text, "documents": ["a"], "truncate": False})
    assert "query has" in assert_error(refused, 400, param="query")["detail"]


def test_tokenize_cuts_a_long_text_and_bounds_its_answer(roomy, tokenizer):
    text = prose(BOUND + 3000)
    item = post(roomy, "/tokenize", {"input": text}).json["data"][0]
    assert item["count"] == MAX_TOKENS and item["truncated"]
    assert item["ids"] == cut(tokenizer.encode([text]), MAX_TOKENS, True)[0].tolist()
    limit = TOKENIZE_ANSWER_TOKENS * MAX_TOKENS
    many = [prose(400, seed) for seed in range(limit // MAX_TOKENS + 1)]  # each past max_length: cut to it
    refused = post(roomy, "/tokenize", {"input": many})
    assert f"more than /tokenize's limit of {limit}" in assert_error(refused, 413)["detail"]


def test_tei_tokenize_bounds_each_text_and_the_answer(roomy):
    too_long = post(roomy, "/tokenize", {"inputs": "a" * (BOUND + 1)})
    assert too_long.status_code == 413 and too_long.json["error_type"] == "Validation"
    assert f"inputs[0] has {BOUND + 1} characters, more than /tokenize's limit of {BOUND}" in too_long.json["error"]
    limit = TOKENIZE_ANSWER_TOKENS * MAX_TOKENS
    refused = post(roomy, "/tokenize", {"inputs": ["a " * (BOUND // 2)] * 3})  # about 3 × 1,000 tokens
    assert refused.status_code == 413 and f"limit of {limit}" in refused.json["error"]
    assert len(post(roomy, "/tokenize", {"inputs": "a b c"}).json[0]) > 3
