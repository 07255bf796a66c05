"""The engine's scores equal FlagEmbedding's ``BGEM3FlagModel.compute_score`` on the same folder,
and the readable sparse weights equal its ``convert_id_to_token``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embsvc.core.serialize import embedding_items
from embsvc.core.tokenizer import truncate
from gpu_pool.wire.protocol import SCORE_MODES, Kind
from testkit.workload import MIXED_TEXTS, PARAGRAPH

QUERIES = ["What is BGE-M3 hybrid retrieval?", "Как работает поиск по документам?", "检索"]
# Short and long, several scripts; the longest runs in a pass of its own (max_batch_tokens 4096),
# so some documents are done before the query and some after it.
DOCUMENTS = MIXED_TEXTS



def served(client, tokenizer, query, documents, weights, max_length) -> np.ndarray:
    ids = [truncate(x, max_length) for x in tokenizer.encode([query, *documents])]
    return client.score(ids, weights, tokenizer.unused_ids)


def compute_score(reference, query, documents, weights, max_length, batch_size) -> np.ndarray:
    scores = reference.compute_score([(query, d) for d in documents], batch_size=batch_size,
                                     max_query_length=max_length, max_passage_length=max_length,
                                     weights_for_different_modes=list(weights))
    return np.array([scores[mode] for mode in SCORE_MODES]).T


@pytest.mark.parametrize("weights", [(0.4, 0.2, 0.4), (1.0, 0.3, 1.0), (0.1, 0.9, 0.0)])
@pytest.mark.parametrize("query", QUERIES)
def test_scores_equal_compute_score(client, tokenizer, reference, query, weights):
    ours = served(client, tokenizer, query, DOCUMENTS, weights, 8192)
    # One pair per batch: FlagEmbedding pads nothing, so its ColBERT max sees the document's own rows only.
    ref = compute_score(reference, query, DOCUMENTS, weights, 8192, batch_size=1)
    assert ours.shape == (len(DOCUMENTS), 5)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_scores_equal_compute_score_when_truncated(client, tokenizer, reference):
    query, weights = PARAGRAPH, (0.4, 0.2, 0.4)
    ours = served(client, tokenizer, query, DOCUMENTS, weights, 24)
    np.testing.assert_allclose(ours, compute_score(reference, query, DOCUMENTS, weights, 24, 1), atol=1e-4, rtol=0)


@pytest.mark.slow  # seconds of its own: in make test, not test-fast
def test_batched_compute_score_differs_only_by_its_zero_padding(client, tokenizer, reference):
    """In a batch, FlagEmbedding pads shorter documents with zero ColBERT rows, which join the max:
    a query row whose best similarity is negative counts 0 there. Dense and sparse agree everywhere,
    ColBERT on the longest document; elsewhere the batch can only raise the score, to exactly the
    value with each row's best match floored at 0."""
    query, weights = QUERIES[0], (0.4, 0.2, 0.4)
    ours = served(client, tokenizer, query, DOCUMENTS, weights, 8192)
    batched = compute_score(reference, query, DOCUMENTS, weights, 8192, batch_size=len(DOCUMENTS))
    np.testing.assert_allclose(ours[:, :2], batched[:, :2], atol=1e-4, rtol=0)
    lengths = [len(x) for x in tokenizer.encode(DOCUMENTS)]
    longest = int(np.argmax(lengths))
    assert abs(ours[longest, 2] - batched[longest, 2]) <= 1e-4
    vectors = embed_colbert(client, tokenizer, [query, *DOCUMENTS])
    floored = [np.maximum((vectors[0] @ doc.T).max(axis=1), 0).mean() for doc in vectors[1:]]
    padded = [i for i in range(len(DOCUMENTS)) if i != longest]
    np.testing.assert_allclose(batched[padded, 2], np.array(floored)[padded], atol=1e-4, rtol=0)
    assert (batched[:, 2] >= ours[:, 2] - 1e-4).all()
    assert (batched[:, 2] - ours[:, 2]).max() > 1e-3, "this model shows the padding effect somewhere"


def embed_colbert(client, tokenizer, texts) -> list[np.ndarray]:
    ids = tokenizer.encode(texts)
    with client.embed(ids, Kind.COLBERT, tokenizer.unused_ids) as result:
        items = embedding_items(result, Kind.COLBERT, "float")
        return [np.array(item["colbert_embedding"]) for item in items]


def test_score_jobs_share_passes_with_embedding_jobs(client, tokenizer, reference):
    weights = (0.4, 0.2, 0.4)
    expected = {q: compute_score(reference, q, DOCUMENTS[:6], weights, 8192, 1) for q in QUERIES}

    def run(i):
        if i % 2:
            ids = tokenizer.encode([DOCUMENTS[i % len(DOCUMENTS)]])
            with client.embed(ids, Kind.DENSE | Kind.SPARSE, tokenizer.unused_ids) as result:
                return None, result.dense(0).copy()
        query = QUERIES[i % len(QUERIES)]
        return query, served(client, tokenizer, query, DOCUMENTS[:6], weights, 8192)

    before = client.snapshot()[0]
    with ThreadPoolExecutor(8) as executor:
        results = list(executor.map(run, range(24)))
    after = client.snapshot()[0]
    for query, table in results:
        if query is not None:
            np.testing.assert_allclose(table, expected[query], atol=1e-4, rtol=0)
    assert after.stats.batched_requests - before.stats.batched_requests > after.stats.batches - before.stats.batches


@pytest.mark.slow  # seconds of its own: in make test, not test-fast
def test_sparse_tokens_equal_convert_id_to_token(client, tokenizer, reference, encoded):
    decode = tokenizer.decode_each
    ids = [truncate(x, 8192) for x in tokenizer.encode(DOCUMENTS)]
    with client.embed(ids, Kind.SPARSE, tokenizer.unused_ids) as result:
        items = embedding_items(result, Kind.SPARSE, "float", decode=decode)
    # The question test_vectors_match_flagembedding asks of FlagEmbedding too: answered once a session.
    lexical = encoded(DOCUMENTS, 8192, batch_size=4, return_dense=True, return_sparse=True,
                      return_colbert_vecs=True)["lexical_weights"]
    for item, ref in zip(items, reference.convert_id_to_token(lexical), strict=True):
        assert list(item["sparse_tokens"]) == list(ref)
        for token, weight in ref.items():
            assert abs(float(item["sparse_tokens"][token]) - float(weight)) <= 1e-4
