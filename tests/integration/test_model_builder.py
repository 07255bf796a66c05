"""The random bge-m3 builder's model run by FlagEmbedding (the reference every parity test uses):
it loads, and its vectors are distinct and its sparse weights a healthy mix. The builder's
files, tokenizer and idempotence: tests/unit/test_model_builder.py."""

from __future__ import annotations

import numpy as np

from testkit.workload import MIXED_TEXTS


def test_flagembedding_loads_and_encodes(reference) -> None:
    texts = MIXED_TEXTS[:6]  # several scripts and emoji, up to a sentence long
    out = reference.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True)

    dense = out["dense_vecs"]
    assert dense.shape == (len(texts), 32)
    # Different texts give clearly different dense vectors.
    cosines = dense @ dense.T
    assert cosines[~np.eye(len(texts), dtype=bool)].max() < 0.99

    kept = candidates = 0
    for text, weights, colbert in zip(texts, out["lexical_weights"], out["colbert_vecs"], strict=True):
        ids = reference.tokenizer(text)["input_ids"]
        assert colbert.shape == (len(ids) - 1, 32)
        assert weights, text
        kept += len(weights)
        candidates += len(set(ids) - {0, 1, 2, 3})
    # A healthy mix: most tokens get a positive weight (~75%), some get 0.
    assert 0.5 < kept / candidates < 0.95
