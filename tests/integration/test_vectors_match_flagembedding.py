"""The engine's vectors equal FlagEmbedding's ``BGEM3FlagModel.encode`` on the same folder (float32, CPU)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embsvc.core.serialize import embedding_items
from embsvc.core.tokenizer import truncate
from gpu_pool.wire.protocol import Kind
from testkit.workload import MIXED_TEXTS, PARAGRAPH

ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
TEXTS = MIXED_TEXTS



def served(client, tokenizer, texts, max_length, kinds=ALL) -> list[dict]:
    ids = [truncate(x, max_length) for x in tokenizer.encode(texts)]
    with client.embed(ids, kinds, tokenizer.unused_ids) as result:
        items = embedding_items(result, kinds, "float")
        return [{k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in item.items()} for item in items]


def expected(encoded, texts, max_length) -> dict:
    return encoded(texts, max_length, batch_size=4, return_dense=True, return_sparse=True, return_colbert_vecs=True)


def assert_same(item: dict, ref: dict, i: int, kinds: Kind = ALL) -> None:
    if kinds & Kind.DENSE:
        dense, ref_dense = item["dense_embedding"], ref["dense_vecs"][i]
        cosine = dense @ ref_dense / np.linalg.norm(dense) / np.linalg.norm(ref_dense)
        assert cosine >= 0.99999
    else:
        assert item["dense_embedding"] is None
    if kinds & Kind.SPARSE:
        sparse, ref_sparse = item["sparse_embedding"], ref["lexical_weights"][i]
        assert set(sparse) == set(ref_sparse)
        assert sparse, "the sparse head yields weights on this model"
        for token, weight in ref_sparse.items():
            assert abs(float(sparse[token]) - float(weight)) <= 1e-4
    else:
        assert item["sparse_embedding"] is None
    if kinds & Kind.COLBERT:
        colbert, ref_colbert = item["colbert_embedding"], ref["colbert_vecs"][i]
        assert colbert.shape == ref_colbert.shape
        assert np.abs(colbert - ref_colbert).max() <= 1e-4
    else:
        assert item["colbert_embedding"] is None


@pytest.mark.parametrize("max_length", [8192, 512, 16])
def test_batched_inputs_match(client, tokenizer, encoded, max_length):
    items = served(client, tokenizer, TEXTS, max_length)
    ref = expected(encoded, TEXTS, max_length)
    for i, item in enumerate(items):
        assert_same(item, ref, i)


def test_single_inputs_match(client, tokenizer, encoded):
    ref = expected(encoded, TEXTS, 8192)
    for i, text in enumerate(TEXTS):
        assert_same(served(client, tokenizer, [text], 8192)[0], ref, i)


def test_longest_input_runs(client, tokenizer, encoded):
    text = PARAGRAPH * 200
    ids = tokenizer.encode([text])[0]
    assert len(ids) > 8192
    item = served(client, tokenizer, [text], 8192)[0]
    assert item["colbert_embedding"].shape[0] == 8191
    assert_same(item, expected(encoded, [text], 8192), 0)


def test_concurrent_jobs_with_mixed_kinds_each_get_their_own(client, tokenizer, encoded):
    kind_sets = [Kind.DENSE, Kind.SPARSE, Kind.COLBERT, Kind.DENSE | Kind.SPARSE, ALL, Kind.SPARSE | Kind.COLBERT]
    ref = expected(encoded, TEXTS, 8192)
    jobs = [(i % len(TEXTS), kind_sets[i % len(kind_sets)]) for i in range(36)]

    def run(job):
        index, kinds = job
        return served(client, tokenizer, [TEXTS[index]], 8192, kinds)[0]

    before = client.snapshot()[0]
    with ThreadPoolExecutor(12) as executor:
        results = list(executor.map(run, jobs))
    after = client.snapshot()[0]
    for (index, kinds), item in zip(jobs, results, strict=True):
        assert_same(item, ref, index, kinds)
    batches = after.stats.batches - before.stats.batches
    assert after.stats.batched_requests - before.stats.batched_requests > batches, "jobs shared forward passes"
