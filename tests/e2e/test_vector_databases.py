"""Hybrid search in real vector databases, fed by the real server over HTTP through embsvc_client:
the examples of docs/vector-databases.md run as written (Qdrant in local mode, Milvus Lite in a
file), then each database finds planted documents.

The test model is a tiny random one (hidden size 32, a toy tokenizer): its similarities mean
nothing, so no natural-language query could find its answer honestly. Each planted query is
therefore the exact text of its planted document, among distractors that share many of its words
(two capitals, two "largest"s, several "dense, sparse" sentences): an exact copy is the best match
for every kind (dense cosine 1, all its own token weights, every query token matched by itself in
MaxSim), and any other document first would be a fault in the pipeline (vectors mixed up between
documents, sparse ids misread, a ColBERT matrix cut or misaligned, a wrong fusion).
"""

from __future__ import annotations

import numpy as np
import pytest

from embsvc_client import Client
from tests.e2e.conftest import TOKEN
from tests.e2e.readme import blocks, region, run_python, section

PLANTED = [
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany and its largest city.",
    "The Pacific Ocean is the largest and deepest ocean on Earth.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "Rust guarantees memory safety without a garbage collector.",
    "Москва — столица России.",
    "北京是中国的首都。",
    "Qdrant keeps dense, sparse and multi-vector points for every document.",
    "A lighthouse keeper counted seven zebras on the quiet beach at dawn.",
    "The violin concerto was rehearsed in the old granary by candlelight.",
]
def run_examples(database: str, server) -> tuple[dict, str]:
    """The python blocks of the page's section on ``database``, run against ``server``."""
    examples = blocks(section(region("vector-databases"), database), "python")
    return run_python(examples, server, f"docs/vector-databases.md {database}")


@pytest.fixture(scope="module")
def qdrant(server) -> dict:
    namespace, printed = run_examples("Qdrant", server)
    lines = printed.splitlines()
    assert len(lines) == 3 and all(line.startswith("qdrant ") for line in lines), printed
    namespace["index"](PLANTED, first_id=len(namespace["documents"]))
    return namespace


@pytest.fixture(scope="module")
def milvus(server, tmp_path_factory) -> dict:
    # The example writes documents.db in the working folder: a folder of the test's own.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("milvus"))
        namespace, printed = run_examples("Milvus", server)
        lines = printed.splitlines()
        assert len(lines) == 3 and all(line.startswith("milvus ") for line in lines), printed
        namespace["index"](PLANTED, first_id=len(namespace["documents"]))
        yield namespace
        namespace["milvus"].close()


def texts(hits: list[tuple[float, str]]) -> list[str]:
    return [text for _, text in hits]


def test_the_qdrant_collection_holds_the_three_kinds_as_the_server_gives_them(qdrant, server):
    every = [*qdrant["documents"], *PLANTED]
    points = qdrant["qdrant"].retrieve(qdrant["COLLECTION"], ids=[5, len(every) - 1], with_vectors=True)
    with Client(server.url, token=TOKEN) as client:
        want = client.embed([every[5], every[-1]], dense=True, sparse=True, colbert=True)
    assert want.dense is not None and want.sparse is not None and want.colbert is not None
    for point, dense, sparse, colbert in zip(points, want.dense, want.sparse, want.colbert, strict=True):
        np.testing.assert_allclose(point.vector["dense"], dense, atol=1e-5)  # cosine: Qdrant keeps unit vectors
        assert dict(zip(point.vector["sparse"].indices, point.vector["sparse"].values, strict=True)) == \
            pytest.approx(sparse, abs=1e-6)
        np.testing.assert_allclose(point.vector["colbert"], colbert, atol=1e-5)


@pytest.mark.parametrize("using", ["dense", "sparse", "colbert"])
def test_qdrant_finds_each_planted_document_first_through_each_kind(qdrant, using):
    for text in PLANTED:
        assert texts(qdrant["search"](text, using))[0] == text, (using, qdrant["search"](text, using))


def test_qdrant_hybrid_search_finds_each_planted_document_first_ranked_by_colbert(qdrant, server):
    with Client(server.url, token=TOKEN) as client:
        for text in PLANTED:
            hits = qdrant["hybrid_search"](text)
            assert texts(hits)[0] == text, hits
            # The final order is ColBERT's: Qdrant's MaxSim (a sum over the query's token rows) is the
            # server's ColBERT score (their mean) times the number of rows.
            query = client.embed(text, dense=False, colbert=True).colbert
            assert query is not None
            server_scores = [s.colbert for s in client.score(text, texts(hits))]
            np.testing.assert_allclose([score for score, _ in hits], np.array(server_scores) * len(query[0]),
                                       rtol=1e-4)


def test_qdrant_colbert_reranks_only_the_fused_candidates(qdrant):
    """With one candidate per prefetch, the fused set is the dense top hit and the sparse top hit:
    a planted copy is both, so it is the only hit; ColBERT reorders what fusion hands it, nothing more."""
    for text in PLANTED[:3]:
        assert texts(qdrant["hybrid_search"](text, candidates=1)) == [text]


@pytest.mark.parametrize("field", ["dense", "sparse"])
def test_milvus_finds_each_planted_document_first_through_each_field(milvus, field):
    for text in PLANTED:
        assert texts(milvus["search"](text, field))[0] == text, (field, milvus["search"](text, field))


def test_milvus_weighted_hybrid_search_and_colbert_rerank_find_each_planted_document_first(milvus):
    for text in PLANTED:
        hits = milvus["hybrid_search"](text, limit=5)
        assert texts(hits)[0] == text, hits
        scores = [score for score, _ in hits]
        assert scores == sorted(scores, reverse=True)
        reranked = milvus["colbert_rerank"](text, list(reversed(texts(hits))))
        assert texts(reranked)[0] == text and reranked[0][0] == pytest.approx(1.0, abs=1e-5), reranked
