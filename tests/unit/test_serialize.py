"""Readable sparse weights and the width of base64 payloads."""

from __future__ import annotations

import base64

import numpy as np

from embsvc.serialize import embedding_items, sparse_tokens
from gpu_pool.protocol import Kind

UNUSED = np.array([0, 1, 2, 3], dtype=np.int32)


def test_sparse_tokens_follow_first_appearance_and_the_later_id_wins_a_shared_text():
    ids = np.array([0, 9, 5, 7, 5, 8, 2], dtype=np.int32)
    weights = np.array([0.9, 0.0, 0.4, 0.3, 0.6, 0.2, 0.5], dtype=np.float32)
    names = {5: "five", 7: "seven", 8: "five", 9: "nine"}  # 5 and 8 decode alike; 9 has weight 0

    def decode(batch: np.ndarray) -> list[str]:
        return [names[int(i)] for i in batch]

    tokens = sparse_tokens(ids, weights, UNUSED, decode)
    # FlagEmbedding: {"5": 0.6, "7": 0.3, "8": 0.2} in that order, then decoded: "five" is overwritten by id 8.
    assert list(tokens) == ["five", "seven"]
    assert float(tokens["five"]) == np.float32(0.2) and float(tokens["seven"]) == np.float32(0.3)


def test_base64_width_follows_the_dtype():
    ids = [np.array([0, 5, 6, 2], dtype=np.int32)]
    arrays = {"dense": np.array([[0.1, -2.5]], dtype=np.float32),
              "colbert": np.arange(6, dtype=np.float32).reshape(3, 2) / 7}
    for dtype, wire in (("float32", "<f4"), ("float16", "<f2")):
        item = embedding_items(arrays, ids, Kind.DENSE | Kind.COLBERT, "base64", UNUSED, dtype=dtype)[0]
        dense = np.frombuffer(base64.b64decode(item["embedding"]), dtype=wire)
        colbert = np.frombuffer(base64.b64decode(item["colbert_embedding"]), dtype=wire).reshape(3, 2)
        np.testing.assert_array_equal(dense, arrays["dense"][0].astype(wire))
        np.testing.assert_array_equal(colbert, arrays["colbert"].astype(wire))
        assert "sparse_tokens" not in item
