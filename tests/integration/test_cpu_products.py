"""The CPU engine's products on the tiny model: prepacked float32 gives F.linear's vectors, and
DTYPE=int8 stays close to float32 through a real engine process (the full model's figures:
docs/performance.md, "int8 on a CPU")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.cpu import compare
from embsvc.core.serialize import embedding_items
from gpu_pool.client import EngineClient
from gpu_pool.model import cpu_linear
from gpu_pool.model.m3 import M3Model
from gpu_pool.pool import EnginePool
from gpu_pool.wire.protocol import Kind
from testkit.engines import engine_spec, wait_ready
from testkit.workload import MIXED_TEXTS

ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT


def outputs(model: M3Model, lengths: list[int]):
    ids = np.random.default_rng(0).integers(4, 1000, sum(lengths))
    running = model.start(ids, np.array(lengths), ALL, np.arange(len(lengths)))
    while not running.step():
        pass
    return running.outputs_async().wait()


def test_prepacked_float32_gives_f_linear_outputs(tiny_model, monkeypatch):
    monkeypatch.setattr(cpu_linear, "PREPACK", True)
    prepacked = M3Model(tiny_model, torch.device("cpu"), torch.float32)
    assert prepacked.products == "oneDNN prepacked"
    monkeypatch.setattr(cpu_linear, "products", lambda device, dtype: ("F.linear", cpu_linear.Dense, cpu_linear.Dense))
    plain = M3Model(tiny_model, torch.device("cpu"), torch.float32)
    lengths = [9, 17, 4, 17]
    got, expected = outputs(prepacked, lengths), outputs(plain, lengths)
    for kind in ("dense", "sparse", "colbert"):
        np.testing.assert_allclose(getattr(got, kind), getattr(expected, kind), rtol=1e-5, atol=1e-6)


def test_int8_stays_close_to_float32_on_the_tiny_model(tiny_model):
    figures = compare(tiny_model, "int8", documents=60, queries=20, threads=1)
    assert figures["texts"] == 80
    # The tiny model's products are 32 wide, so int8 rounding weighs more than on the full
    # model (whose dense cosine is ≥ 0.998); these bounds catch a broken path, not precision.
    assert figures["dense_cosine_mean"] >= 0.98
    assert figures["sparse_cosine_mean"] >= 0.98
    assert figures["colbert_cosine_mean"] >= 0.97
    assert figures["top10_agreement_sparse"] >= 0.9
    assert figures["dense_cosine_mean"] < 0.99999, "the int8 products ran"


@pytest.fixture(scope="module")
def int8_client(tiny_model):
    pool = EnginePool([engine_spec(tiny_model, dtype="int8")], n_slots=1)
    pool.shm_prefix += "int8-"  # segments' names apart from those of the session's pool
    pool.start()
    try:
        wait_ready(pool)
        yield EngineClient(pool, pool.take_slot(), max_queue_size=50, timeout_s=60)
    finally:
        pool.stop()


def test_an_int8_engine_serves_every_kind(int8_client, client, tokenizer):
    ids = tokenizer.encode(MIXED_TEXTS[:4])
    answers = []
    for engine in (int8_client, client):
        with engine.embed(ids, ALL, tokenizer.unused_ids) as result:
            answers.append(embedding_items(result, ALL, "float"))
    for int8, float32 in zip(*answers, strict=True):
        dense, expected = np.array(int8["dense_embedding"]), np.array(float32["dense_embedding"])
        assert dense @ expected / np.linalg.norm(dense) / np.linalg.norm(expected) >= 0.95
        assert int8["sparse_embedding"], "the sparse head yields weights on this model"
        assert np.array(int8["colbert_embedding"]).shape == np.array(float32["colbert_embedding"]).shape
