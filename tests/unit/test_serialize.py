"""Readable sparse weights and the width of base64 payloads."""

from __future__ import annotations

import base64
import itertools
import os

import numpy as np
import pytest

from embsvc.core.serialize import dumps, dumps_items, embedding_items, sparse_tokens
from gpu_pool import EmbeddingResult, Kind
from gpu_pool.wire.segment import Layout, Segment

UNUSED = np.array([0, 1, 2, 3], dtype=np.int32)
_names = itertools.count()


@pytest.fixture
def result_of():
    """An EmbeddingResult over a real segment holding the given arrays."""
    opened: list[EmbeddingResult] = []

    def make(ids: list[np.ndarray], kinds: Kind, dim: int, **arrays: np.ndarray) -> EmbeddingResult:
        layout = Layout(len(ids), sum(len(x) for x in ids), dim, kinds)
        segment = Segment.create(f"bgem3-serialize-{os.getpid()}-{next(_names)}", layout)
        for name, values in arrays.items():
            segment.arrays[name][:] = values
        opened.append(EmbeddingResult(segment, ids, UNUSED))
        return opened[-1]

    yield make
    for result in opened:
        result.close()


def test_sparse_tokens_follow_first_appearance_and_the_later_id_wins_a_shared_text(result_of):
    ids = np.array([0, 9, 5, 7, 5, 8, 2], dtype=np.int32)
    weights = np.array([0.9, 0.0, 0.4, 0.3, 0.6, 0.2, 0.5], dtype=np.float32)
    names = {5: "five", 7: "seven", 8: "five", 9: "nine"}  # 5 and 8 decode alike; 9 has weight 0

    def decode(batch: np.ndarray) -> list[str]:
        return [names[int(i)] for i in batch]

    tokens = sparse_tokens(result_of([ids], Kind.SPARSE, 2, sparse=weights), 0, decode)
    # FlagEmbedding: {"5": 0.6, "7": 0.3, "8": 0.2} in that order, then decoded: "five" is overwritten by id 8.
    assert list(tokens) == ["five", "seven"]
    assert float(tokens["five"]) == np.float32(0.2) and float(tokens["seven"]) == np.float32(0.3)


def test_base64_width_follows_the_dtype(result_of):
    ids = [np.array([0, 5, 6, 2], dtype=np.int32)]
    dense = np.array([[0.1, -2.5]], dtype=np.float32)
    colbert = np.arange(6, dtype=np.float32).reshape(3, 2) / 7
    result = result_of(ids, Kind.DENSE | Kind.COLBERT, 2, dense=dense, colbert=colbert)
    for dtype, wire in (("float32", "<f4"), ("float16", "<f2")):
        item = embedding_items(result, Kind.DENSE | Kind.COLBERT, "base64", dtype=dtype)[0]
        got_dense = np.frombuffer(base64.b64decode(item["embedding"]), dtype=wire)
        got_colbert = np.frombuffer(base64.b64decode(item["colbert_embedding"]), dtype=wire).reshape(3, 2)
        np.testing.assert_array_equal(got_dense, dense[0].astype(wire))
        np.testing.assert_array_equal(got_colbert, colbert.astype(wire))
        assert "sparse_tokens" not in item


def test_each_input_reads_its_own_packed_rows(result_of):
    """Two inputs of 3 and 4 tokens: 2 and 3 ColBERT rows, token weights at offsets 0 and 3."""
    ids = [np.array([0, 7, 2], dtype=np.int32), np.array([0, 8, 9, 2], dtype=np.int32)]
    sparse = np.array([0.0, 0.7, 0.0, 0.0, 0.8, 0.9, 0.0], dtype=np.float32)
    colbert = np.arange(10, dtype=np.float32).reshape(5, 2)
    result = result_of(ids, Kind.SPARSE | Kind.COLBERT, 2, sparse=sparse, colbert=colbert)
    np.testing.assert_array_equal(result.colbert(0), colbert[:2])
    np.testing.assert_array_equal(result.colbert(1), colbert[2:])
    keys, weights = result.sparse(1)
    assert keys.tolist() == [8, 9] and weights.tolist() == pytest.approx([0.8, 0.9])


@pytest.mark.parametrize("count", [0, 1, 3])
def test_items_serialized_one_at_a_time_give_the_same_body(count):
    items = [{"object": "embedding", "index": i, "embedding": np.arange(3, dtype=np.float32) + i} for i in range(count)]
    whole = {"object": "list", "model": "m", "data": items, "usage": {"total_tokens": 3}}
    body = dumps_items({"object": "list", "model": "m"}, "data", items, {"usage": {"total_tokens": 3}})
    assert body == dumps(whole)
