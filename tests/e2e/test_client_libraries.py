"""The client libraries themselves against the real server, over real HTTP: huggingface_hub,
LangChain, LlamaIndex and Haystack, each with the vectors (or scores) of this server's own
endpoints for the same texts; and docs/clients.md's examples of them (region tei-clients),
run as they are written.

Haystack's telemetry is off: it would try to reach its collector from inside the tests.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tiktoken

from testkit.server import Server
from tests.deploy.helpers import tool
from tests.e2e.conftest import TOKEN, embed, ok, post
from tests.e2e.readme import blocks, region, run_python, run_shell

os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"  # read when haystack is first imported

from haystack import Document  # after the telemetry switch above
from haystack.utils import Secret
from haystack_integrations.components.embedders.huggingface_api import (
    HuggingFaceAPIDocumentEmbedder,
    HuggingFaceAPITextEmbedder,
    HuggingFaceTEISparseDocumentEmbedder,
    HuggingFaceTEISparseTextEmbedder,
)
from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker
from huggingface_hub import AsyncInferenceClient, InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from langchain_huggingface import HuggingFaceEndpointEmbeddings
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

TEXTS = ["What is BGE-M3?", "Paris is the capital of France.", "Что такое гибридный поиск?"]
ATOL = 1e-6  # JSON carries float32 values; the libraries read them as float32 or float64


def reference(server: Server, texts: list[str]) -> dict[str, Any]:
    """What /v1/embeddings gives for ``texts``: dense rows and sparse weights by token id."""
    data = embed(server, {"input": texts, "return_colbert": False})["data"]
    return {"dense": np.array([item["dense_embedding"] for item in data]),
            "sparse": [{int(k): v for k, v in item["sparse_embedding"].items()} for item in data]}


def assert_sparse(indices: list[int], values: list[float], expected: dict[int, float]) -> None:
    assert sorted(indices) == sorted(expected)
    np.testing.assert_allclose(values, [expected[i] for i in indices], atol=ATOL)


def test_huggingface_hub_feature_extraction(server):
    expected = reference(server, TEXTS)["dense"]
    hub = InferenceClient(base_url=server.url, api_key=TOKEN)
    np.testing.assert_allclose(hub.feature_extraction(TEXTS), expected, atol=ATOL)
    one = hub.feature_extraction(TEXTS[2], truncate=True, normalize=True, truncation_direction="left")
    assert one.dtype == np.float32 and one.shape == (1, expected.shape[1])
    np.testing.assert_allclose(one[0], expected[2], atol=ATOL)
    with pytest.raises(HfHubHTTPError) as refused:  # what BGE-M3 cannot do, refused with a reason
        hub.feature_extraction(TEXTS[0], prompt_name="query")
    assert refused.value.response.status_code == 422 and "prompt_name" in refused.value.response.text
    with pytest.raises(HfHubHTTPError) as unauthorized:
        InferenceClient(base_url=server.url, api_key="wrong").feature_extraction(TEXTS[0])
    assert unauthorized.value.response.status_code == 401


def test_langchain_huggingface_endpoint_embeddings(server):
    expected = reference(server, TEXTS)["dense"]
    embeddings = HuggingFaceEndpointEmbeddings(model="BAAI/bge-m3", huggingfacehub_api_token=TOKEN)
    # langchain-huggingface 1.x refuses a URL as model: it is handed clients of the server.
    embeddings.client = InferenceClient(base_url=server.url, api_key=TOKEN)
    embeddings.async_client = AsyncInferenceClient(base_url=server.url, api_key=TOKEN)
    np.testing.assert_allclose(embeddings.embed_documents(TEXTS), expected, atol=ATOL)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[1]), expected[1], atol=ATOL)
    np.testing.assert_allclose(asyncio.run(embeddings.aembed_documents(TEXTS)), expected, atol=ATOL)


def test_langchain_openai_embeddings(server):
    expected = reference(server, TEXTS)["dense"]
    embeddings = OpenAIEmbeddings(model="bge-m3", base_url=f"{server.url}/v1", api_key=TOKEN,
                                  check_embedding_ctx_length=False)
    np.testing.assert_allclose(embeddings.embed_documents(TEXTS), expected, atol=ATOL)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[0]), expected[0], atol=ATOL)
    np.testing.assert_allclose(asyncio.run(embeddings.aembed_documents(TEXTS)), expected, atol=ATOL)


def test_langchain_openai_embeddings_by_default_learn_the_setting_from_the_server(server, monkeypatch):
    """With its defaults LangChain sends tiktoken's token ids. tiktoken's cl100k_base would be
    downloaded, which cannot happen here: a byte-level encoding stands in for it, so that
    LangChain sends its ids over HTTP and shows the server's answer."""
    byte_level = tiktoken.Encoding("cl100k_base stand-in", pat_str=r"\S+|\s+",
                                   mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: byte_level)
    embeddings = OpenAIEmbeddings(model="bge-m3", base_url=f"{server.url}/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        embeddings.embed_documents(TEXTS)
    assert refused.value.status_code == 400
    assert "check_embedding_ctx_length=False" in refused.value.body["message"]  # openai reads the error object


def test_llamaindex_text_embeddings_inference(server):
    expected = reference(server, TEXTS)["dense"]
    model = TextEmbeddingsInference(model_name="BAAI/bge-m3", base_url=server.url, auth_token=TOKEN,
                                    embed_batch_size=2)
    np.testing.assert_allclose(model.get_text_embedding_batch(TEXTS), expected, atol=ATOL)  # two requests
    np.testing.assert_allclose(model.get_query_embedding(TEXTS[2]), expected[2], atol=ATOL)
    np.testing.assert_allclose(asyncio.run(model.aget_text_embedding(TEXTS[1])), expected[1], atol=ATOL)


def test_llamaindex_openai_like_embedding(server):
    expected = reference(server, TEXTS)["dense"]
    model = OpenAILikeEmbedding(model_name="bge-m3", api_base=f"{server.url}/v1", api_key=TOKEN)
    np.testing.assert_allclose(model.get_text_embedding_batch(TEXTS), expected, atol=ATOL)
    np.testing.assert_allclose(model.get_query_embedding(TEXTS[0]), expected[0], atol=ATOL)


def test_haystack_dense_embedders(server):
    expected = reference(server, TEXTS)["dense"]
    options = {"api_type": "text_embeddings_inference", "api_params": {"url": server.url},
               "token": Secret.from_token(TOKEN), "normalize": True}
    text = HuggingFaceAPITextEmbedder(**options).run(TEXTS[1])["embedding"]
    np.testing.assert_allclose(text, expected[1], atol=ATOL)
    documents = HuggingFaceAPIDocumentEmbedder(**options, batch_size=2, progress_bar=False).run(
        [Document(content=t) for t in TEXTS])["documents"]
    np.testing.assert_allclose([d.embedding for d in documents], expected, atol=ATOL)


def test_haystack_default_normalize_false_is_refused_with_the_reason(server):
    embedder = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference", api_params={"url": server.url},
                                          token=Secret.from_token(TOKEN))
    with pytest.raises(HfHubHTTPError) as refused:
        embedder.run(TEXTS[0])
    assert refused.value.response.status_code == 422
    assert "normalize" in refused.value.response.json()["error"]


def test_haystack_sparse_embedders(server):
    expected = reference(server, TEXTS)["sparse"]
    token = Secret.from_token(TOKEN)
    query = HuggingFaceTEISparseTextEmbedder(api_base_url=server.url, token=token).run(TEXTS[0])["sparse_embedding"]
    assert_sparse(query.indices, query.values, expected[0])
    documents = HuggingFaceTEISparseDocumentEmbedder(api_base_url=server.url, token=token, batch_size=2,
                                                     progress_bar=False).run([Document(content=t) for t in TEXTS])
    for document, weights in zip(documents["documents"], expected, strict=True):
        assert_sparse(document.sparse_embedding.indices, document.sparse_embedding.values, weights)


def test_haystack_ranker(server):
    documents = [Document(content=t) for t in [*TEXTS[1:], "What is BGE-M3? A model."]]
    ranked = HuggingFaceTEIRanker(url=server.url, top_k=3, token=Secret.from_token(TOKEN)).run(
        query=TEXTS[0], documents=documents)["documents"]
    ours = ok(post(server, "/v1/rerank", {"query": TEXTS[0], "documents": [d.content for d in documents]}))["results"]
    assert [d.content for d in ranked] == [documents[r["index"]].content for r in ours]
    np.testing.assert_allclose([d.score for d in ranked], [r["relevance_score"] for r in ours], atol=ATOL)


def test_the_documented_examples_run_and_agree(server):
    examples = blocks(region("tei-clients"), "python")
    assert len(examples) >= 5
    namespace, _ = run_python(examples, server, "docs/clients.md tei-clients")
    two = reference(server, ["What is BGE-M3?", "Paris is the capital of France."])
    for name in ("hub_vectors", "lc_vectors", "lc_openai_vectors", "li_vectors"):
        np.testing.assert_allclose(namespace[name], two["dense"], atol=ATOL, err_msg=name)
    for name in ("lc_query", "li_query", "hs_query"):
        np.testing.assert_allclose(namespace[name], two["dense"][0], atol=ATOL, err_msg=name)
    np.testing.assert_allclose([d.embedding for d in namespace["hs_documents"]], two["dense"], atol=ATOL)
    query = namespace["hs_sparse_query"]
    assert_sparse(query.indices, query.values, two["sparse"][0])
    for document, weights in zip(namespace["hs_sparse_documents"], two["sparse"], strict=True):
        assert_sparse(document.sparse_embedding.indices, document.sparse_embedding.values, weights)
    assert namespace["hs_ranked"][0].content == "What is BGE-M3?"


def test_the_documented_curl_examples_run(server):
    examples = blocks(region("tei-clients"), "sh")
    assert examples
    printed = "".join(run_shell(examples, server, {"PATH": str(Path(tool("curl")).parent) + ":/usr/bin:/bin"}))
    assert '"error' not in printed, printed
    assert printed.startswith("[[") and '"index":' in printed and '"special":true' in printed
    assert '"model_id":"BAAI/bge-m3"' in printed
