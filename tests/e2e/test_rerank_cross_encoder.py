"""The bge-reranker-v2-m3 cross-encoder through real gunicorn and a real engine (the tiny random one,
testkit/reranker_builder.py), called by the real clients of rerankers: Cohere's SDK, LangChain's
CohereRerank, Haystack's HuggingFaceTEIRanker and LlamaIndex's TEI rerank. Each ranking is checked
against FlagEmbedding's ``FlagReranker.compute_score`` on the same folder, in this process.

Haystack's telemetry is off: it would try to reach its collector from inside the tests.
"""

from __future__ import annotations

import os

import cohere
import numpy as np
import pytest
import requests
from FlagEmbedding import FlagReranker
from langchain_cohere import CohereRerank
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.postprocessor.tei_rerank import TextEmbeddingInference
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import AUTH, TOKEN, assert_error, ok, post, serving
from tests.e2e.readme import blocks, region, run_python

os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"  # read when haystack is first imported

from haystack import Document as HaystackDocument  # after the telemetry switch above
from haystack.utils import Secret
from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker

RERANKER = "BAAI/bge-reranker-v2-m3"
QUERY = "How does a cross-encoder rank passages?"
PASSAGES = [
    "A cross-encoder reads the query and the passage together and gives one relevance score.",
    "Поиск по документам объединяет плотные и разреженные векторы.",
    "北京是中国的首都。",
    "hello",
    "Bi-encoders embed each text alone; a cross-encoder sees both texts in one pass. " * 40,  # past 512 tokens
    "مرحبا بالعالم",
]
ATOL = 1e-4  # the engine's float32 against FlagReranker's, as the integration tests hold it


@pytest.fixture(scope="module")
def reranking(tiny_model, tiny_reranker, tmp_path_factory):
    """A server with the cross-encoder beside bge-m3 (the session's ``server`` serves bge-m3 alone)."""
    with serving(tiny_model, tmp_path_factory.mktemp("rerank-server"), RERANKER_PATH=str(tiny_reranker)) as server:
        yield server


@pytest.fixture(scope="module")
def logits(tiny_reranker) -> np.ndarray:
    """FlagReranker's raw logits of (QUERY, passage), its default max_length 512, in document order."""
    reference = FlagReranker(str(tiny_reranker), use_fp16=False, devices="cpu")
    raw = np.array(reference.compute_score([(QUERY, p) for p in PASSAGES], batch_size=1))
    assert raw.std() > 0.01, "the tiny model tells the passages apart: the order means something"
    return raw


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def order(scores: np.ndarray) -> list[int]:
    return np.argsort(-scores, kind="stable").tolist()


def test_cohere_sdk_v2(reranking, logits):
    client = cohere.ClientV2(api_key=TOKEN, base_url=reranking.url, timeout=60)
    response = client.rerank(model="bge-reranker-v2-m3", query=QUERY, documents=PASSAGES, top_n=4)
    assert [r.index for r in response.results] == order(logits)[:4]
    np.testing.assert_allclose([r.relevance_score for r in response.results], sigmoid(logits)[order(logits)[:4]],
                               atol=ATOL)


def test_langchain_cohere_rerank(reranking, logits):
    """LangChain's CohereRerank: Cohere's v2 client underneath, so /v2/rerank."""
    reranker = CohereRerank(base_url=reranking.url, cohere_api_key=TOKEN, model=RERANKER, top_n=3)
    documents = [Document(page_content=text, metadata={"n": i}) for i, text in enumerate(PASSAGES)]
    compressed = reranker.compress_documents(documents, QUERY)
    assert [d.metadata["n"] for d in compressed] == order(logits)[:3]
    for doc in compressed:
        assert doc.metadata["relevance_score"] == pytest.approx(sigmoid(logits[doc.metadata["n"]]), abs=ATOL)


def test_haystack_tei_ranker(reranking, logits):
    documents = [HaystackDocument(content=text) for text in PASSAGES]
    ranked = HuggingFaceTEIRanker(url=reranking.url, top_k=3, token=Secret.from_token(TOKEN)).run(
        query=QUERY, documents=documents)["documents"]
    assert [PASSAGES.index(d.content) for d in ranked] == order(logits)[:3]
    np.testing.assert_allclose([d.score for d in ranked], sigmoid(logits)[order(logits)[:3]], atol=ATOL)
    raw = HuggingFaceTEIRanker(url=reranking.url, top_k=2, raw_scores=True, token=Secret.from_token(TOKEN)).run(
        query=QUERY, documents=documents)["documents"]
    np.testing.assert_allclose([d.score for d in raw], logits[order(logits)[:2]], atol=ATOL)


def test_llamaindex_tei_rerank(reranking, logits):
    """llama-index-postprocessor-tei-rerank: TEI's /rerank, its token sent as the whole header."""
    reranker = TextEmbeddingInference(base_url=reranking.url, top_n=3, auth_token=f"Bearer {TOKEN}")
    nodes = [NodeWithScore(node=TextNode(text=text, id_=str(i)), score=0.0) for i, text in enumerate(PASSAGES)]
    ranked = reranker.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert [int(n.node.node_id) for n in ranked] == order(logits)[:3]
    np.testing.assert_allclose([n.score for n in ranked], sigmoid(logits)[order(logits)[:3]], atol=ATOL)


def test_each_model_ranks_when_named(reranking, logits):
    body = {"query": QUERY, "documents": PASSAGES}
    cross = ok(post(reranking, "/v1/rerank", {**body, "model": "bge-reranker-v2-m3"}))
    assert cross["model"] == RERANKER and "mode" not in cross
    assert [r["index"] for r in cross["results"]] == order(logits)
    for model in ({"model": "bge-m3"}, {}):  # bge-m3's hybrid scores, also when no model is named
        hybrid = ok(post(reranking, "/v1/rerank", {**body, **model}))
        assert hybrid["model"] == "BAAI/bge-m3" and hybrid["mode"] == "colbert+sparse+dense"
    unknown = assert_error(post(reranking, "/v1/rerank", {**body, "model": "rerank-v3.5"}), 404, "not_found_error",
                           "model")
    assert "'BAAI/bge-m3'" in unknown["detail"] and f"'{RERANKER}'" in unknown["detail"]


def test_both_models_show(reranking):
    models = requests.get(f"{reranking.url}/v1/models", headers=AUTH, timeout=10).json()["data"]
    assert [m["id"] for m in models] == ["BAAI/bge-m3", RERANKER]
    info = requests.get(f"{reranking.url}/info", headers=AUTH, timeout=10).json()
    assert info["reranker"]["model_id"] == RERANKER and info["reranker"]["model_dtype"] == "float32"
    ok(post(reranking, "/rerank", {"query": QUERY, "texts": PASSAGES[:2]}))
    stats = requests.get(f"{reranking.url}/stats", headers=AUTH, timeout=10).json()["models"]
    assert stats[RERANKER]["processed_requests"] >= 1 and stats[RERANKER]["inputs"] >= 2
    text = requests.get(f"{reranking.url}/metrics", timeout=10).text
    counted = {s.labels["model"]: s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "embsvc_engine_model_requests_total"}
    assert counted[RERANKER] >= 1 and "BAAI/bge-m3" in counted
    schema = requests.get(f"{reranking.url}/openapi.json", timeout=10).json()["paths"]["/v1/rerank"]["post"]
    enum = schema["requestBody"]["content"]["application/json"]["schema"]["properties"]["model"]["anyOf"][0]["enum"]
    assert RERANKER in enum and "bge-reranker-v2-m3" in enum


def test_a_server_without_the_cross_encoder_says_so(server):
    alone = server  # the session's server: bge-m3 alone, as testkit starts servers unless told RERANKER_PATH
    error = assert_error(post(alone, "/v2/rerank", {"model": RERANKER, "query": QUERY, "documents": PASSAGES}),
                         404, "not_found_error", "model")
    assert "no cross-encoder" in error["detail"]
    assert [m["id"] for m in requests.get(f"{alone.url}/v1/models", headers=AUTH, timeout=10).json()["data"]] == [
        "BAAI/bge-m3"]


def test_the_documented_examples_run_and_agree(reranking, tiny_reranker):
    examples = blocks(region("rerank-clients"), "python")
    assert len(examples) == 3
    namespace, _ = run_python(examples, reranking, "docs/clients.md rerank-clients")
    query, passages = namespace["query"], namespace["passages"]
    raw = np.array(FlagReranker(str(tiny_reranker), use_fp16=False, devices="cpu").compute_score(
        [(query, p) for p in passages], batch_size=1))
    best = order(raw)[:2]
    assert [r.index for r in namespace["co_ranked"]] == best
    assert [d.page_content for d in namespace["lc_ranked"]] == [passages[i] for i in best]
    assert [n.node.get_content() for n in namespace["li_ranked"]] == [passages[i] for i in best]
    assert [d.content for d in namespace["hs_reranked"]] == [passages[i] for i in best]
    np.testing.assert_allclose([r.relevance_score for r in namespace["co_ranked"]], sigmoid(raw[best]), atol=ATOL)
