"""bfloat16 vectors stay close to float32 ones: the same texts through the model in both types."""

from __future__ import annotations

from bench.gpu.parts import compare


def test_bfloat16_vectors_stay_close_to_float32(tiny_model):
    figures = compare(tiny_model, 64)
    assert figures["texts"] == 64
    assert figures["dense_cosine_min"] >= 0.999
    assert figures["sparse_cosine_min"] >= 0.999
    assert figures["colbert_cosine_mean"] >= 0.999
    assert figures["colbert_cosine_min"] >= 0.99
