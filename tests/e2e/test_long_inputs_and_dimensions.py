"""OpenAI's ``dimensions`` through the official ``openai`` package, and ``chunk_long_inputs`` on the
real engine: a long text's windows, embedded as ordinary inputs, combined in the web worker."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest

from tests.e2e.conftest import TOKEN, assert_error, embed, ok, post

TEXTS = ["BGE-M3 gives dense, sparse and ColBERT vectors", "Еще один текст"]
# The tiny model's tokenizer spells "hello " and "world " in 3 tokens each: with max_length 32 a
# window holds 30 tokens, so this text's windows are exactly the texts of PIECES.
PIECES = ["hello " * 10, "world " * 10, "hello " * 5]
LONG = "".join(PIECES)
WINDOW = 32


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0, timeout=60)


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


# Without encoding_format the package asks for base64 and decodes it itself.
@pytest.mark.parametrize("extra", [{}, {"encoding_format": "float"}])
def test_openai_dimensions_gives_the_first_components_normalised_again(server, client, extra):
    full = embed(server, {"input": TEXTS, "return_sparse": False, "return_colbert": False})["data"]
    result = client.embeddings.create(model="bge-m3", input=TEXTS, dimensions=16, **extra)
    for item, whole in zip(result.data, full, strict=True):
        assert len(item.embedding) == 16
        want = unit(np.asarray(whole["dense_embedding"][:16], dtype=np.float32))
        np.testing.assert_allclose(item.embedding, want, rtol=1e-6, atol=1e-7)


def test_openai_dimensions_out_of_range_is_a_bad_request_naming_the_field(client):
    for value in (0, 1025):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="bge-m3", input="q", dimensions=value)
        assert caught.value.body["param"] == "dimensions"  # type: ignore[index]


def test_float16_base64_with_dimensions(server):
    full = embed(server, {"input": TEXTS[0]})["data"][0]["dense_embedding"]
    item = embed(server, {"input": TEXTS[0], "dimensions": 8, "encoding_format": "base64",
                          "embedding_dtype": "float16"})["data"][0]
    got = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f2")
    np.testing.assert_allclose(got, unit(np.asarray(full[:8], dtype=np.float32)), rtol=2e-3, atol=1e-3)


def test_the_windows_are_the_pieces(server):
    ids = ok(post(server, "/tokenize", {"input": [LONG, *PIECES]}))["data"]
    whole, pieces = ids[0]["ids"], [item["ids"] for item in ids[1:]]
    assert [len(p) for p in pieces] == [WINDOW, WINDOW, 17]
    assert whole[1:-1] == [t for p in pieces for t in p[1:-1]]


def test_a_long_text_is_its_windows_combined(server):
    body = {"input": LONG, "max_length": WINDOW, "chunk_long_inputs": True}
    item = embed(server, body)["data"][0]
    parts = embed(server, {"input": PIECES, "max_length": WINDOW})["data"]
    weights = np.array([WINDOW, WINDOW, 17], dtype=np.float32)
    dense = unit(weights @ np.asarray([p["dense_embedding"] for p in parts], dtype=np.float32))
    np.testing.assert_allclose(item["dense_embedding"], dense, atol=2e-5)
    colbert = np.concatenate([np.asarray(p["colbert_embedding"], dtype=np.float32) for p in parts])
    np.testing.assert_allclose(item["colbert_embedding"], colbert, atol=2e-5)
    sparse: dict[str, float] = {}
    for p in parts:
        for key, weight in p["sparse_embedding"].items():
            sparse[key] = max(weight, sparse.get(key, 0.0))
    assert item["sparse_embedding"] == pytest.approx(sparse, abs=2e-5)
    usage = embed(server, body)["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] == WINDOW + WINDOW + 17


def test_without_the_flag_the_long_text_is_truncated(server):
    body = embed(server, {"input": LONG, "max_length": WINDOW})
    first = embed(server, {"input": PIECES[0], "max_length": WINDOW})["data"][0]
    np.testing.assert_allclose(body["data"][0]["dense_embedding"], first["dense_embedding"], atol=2e-5)
    assert body["usage"]["total_tokens"] == WINDOW


def test_a_text_within_the_limit_answers_the_same_with_the_flag_on_or_off(server):
    off = post(server, "/v1/embeddings", {"input": TEXTS})
    on = post(server, "/v1/embeddings", {"input": TEXTS, "chunk_long_inputs": True})
    assert on.status_code == 200 and on.content == off.content
    tei_off = post(server, "/embed_all", {"inputs": TEXTS})
    assert post(server, "/embed_all", {"inputs": TEXTS, "chunk_long_inputs": True}).content == tei_off.content


def test_tei_routes_and_the_request_bound_on_a_small_window(start_server):
    server = start_server(MAX_TOKENS=str(WINDOW), MAX_REQUEST_TOKENS="100", CHUNK_LONG_INPUTS="true")
    v1 = embed(server, {"input": LONG})["data"][0]  # the setting gives the default
    rows = ok(post(server, "/embed", {"inputs": LONG}))
    np.testing.assert_allclose(rows[0], v1["dense_embedding"], atol=1e-6)
    assert len(ok(post(server, "/embed_all", {"inputs": LONG}))[0]) == len(v1["colbert_embedding"])
    # 81 tokens fit; twice the text does not: a 413 naming the bound, and the server answers on.
    error = assert_error(post(server, "/v1/embeddings", {"input": [LONG, LONG]}), 413, param="input")
    assert "MAX_REQUEST_TOKENS 100" in error["error"]["message"]
    assert post(server, "/embed", {"inputs": [LONG, LONG]}).status_code == 413
    assert embed(server, {"input": LONG})["data"][0]["dense_embedding"] == v1["dense_embedding"]
