"""The CPU engine's products on the tiny model: prepacked float32 gives F.linear's vectors,
bfloat16 products run between float32 activations and stay close to float32, and DTYPE=int8
stays close to float32 through a real engine process (the full model's figures:
docs/performance.md, "int8 on a CPU")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cpu import compare
from embsvc.core.serialize import embedding_items
from gpu_pool.client import EngineClient
from gpu_pool.model import cpu_linear, native
from gpu_pool.model.m3 import M3Model
from gpu_pool.pool import EnginePool
from gpu_pool.wire.protocol import Kind
from testkit.engines import engine_spec, wait_ready
from testkit.workload import MIXED_TEXTS

ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
ROOT = Path(__file__).resolve().parents[2]


def outputs(model: M3Model, lengths: list[int]):
    ids = np.random.default_rng(0).integers(4, 1000, sum(lengths))
    running = model.start(ids, np.array(lengths), ALL, np.arange(len(lengths)))
    while not running.step():
        pass
    return running.outputs_async().wait()


def test_prepacked_float32_gives_f_linear_outputs(tiny_model, monkeypatch):
    monkeypatch.setattr(cpu_linear, "PREPACK_MIN_WEIGHTS", 0)  # the tiny model's weights too
    prepacked = M3Model(tiny_model, torch.device("cpu"), torch.float32)
    assert prepacked.products == "oneDNN prepacked"
    f32 = torch.float32
    plain_products = cpu_linear.Products("F.linear", cpu_linear.Dense, cpu_linear.Dense, f32, f32)
    monkeypatch.setattr(cpu_linear, "products", lambda device, dtype: plain_products)
    plain = M3Model(tiny_model, torch.device("cpu"), torch.float32)
    lengths = [9, 17, 4, 17]
    got, expected = outputs(prepacked, lengths), outputs(plain, lengths)
    for kind in ("dense", "sparse", "colbert"):
        np.testing.assert_allclose(getattr(got, kind), getattr(expected, kind), rtol=1e-5, atol=1e-6)


def test_bfloat16_products_run_between_float32_activations(tiny_model, monkeypatch):
    """``auto`` on a CPU with bf16 (monkeypatched so on any CPU): bfloat16 products, float32 sums
    and norms, the embedding table in bfloat16. What it gains over bfloat16 throughout shows over
    24 layers, not the tiny model's (the full model's figures: docs/performance.md)."""
    monkeypatch.setattr(cpu_linear, "_prepacks", lambda dtype: True)
    # oneDNN's products (the native kernel's: test_native_products.py)
    monkeypatch.setattr(native, "library", lambda: (None, "not built"))
    model = M3Model(tiny_model, torch.device("cpu"), torch.bfloat16)
    assert (model.dtype, model.dtype_name, model.encoder.word.dtype) == (torch.float32, "bfloat16", torch.bfloat16)
    assert isinstance(model.encoder.layers[0].qkv, cpu_linear.InBfloat16), model.products
    assert isinstance(model.colbert_linear, cpu_linear.InBfloat16)
    got = outputs(model, [9, 17, 4])
    assert got.dense.dtype == got.sparse.dtype == got.colbert.dtype == np.float32
    figures = compare(tiny_model, "bfloat16", documents=30, queries=10, threads=1)
    assert figures["dense_cosine_min"] >= 0.999 and figures["sparse_cosine_min"] >= 0.999, figures
    assert figures["colbert_cosine_mean"] >= 0.999, figures
    assert figures["dense_cosine_mean"] < 1.0, "the products ran in bfloat16"


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
def int8_client(tiny_model, request):
    pool = EnginePool([engine_spec(tiny_model, dtype="int8")], n_slots=1)
    pool.start()
    try:
        # The test compares with the session's float32 engine: it starts (and is waited for)
        # while this one loads, not after it.
        request.getfixturevalue("client")
        wait_ready(pool)
        yield EngineClient(pool, pool.take_slot(), max_queue_size=50, timeout_s=60)
    finally:
        pool.stop()


@pytest.mark.slow
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


_MANY_SHAPES = """
import sys
import numpy as np, torch
from pathlib import Path
from gpu_pool.model import cpu_linear
from gpu_pool.model.m3 import M3Model
from gpu_pool.wire.protocol import Kind
cpu_linear.PREPACK_MIN_WEIGHTS = 0  # the tiny model's weights too
model = M3Model(Path(sys.argv[1]), torch.device("cpu"), torch.float32)
assert isinstance(model.encoder.layers[0].qkv, cpu_linear.Prepacked), model.products
rng = np.random.default_rng(0)
def rss_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 1e6
def one_pass():
    lengths = rng.integers(5, 60, size=int(rng.integers(1, 16)))
    ids = rng.integers(5, 1000, size=int(lengths.sum()))
    running = model.start(ids, lengths, Kind.DENSE, np.zeros(0, dtype=np.int64))
    while not running.step():
        pass
    running.outputs_async().wait()
for _ in range(50):
    one_pass()
before = rss_mb()
for _ in range(400):
    one_pass()
print(rss_mb() - before)
"""


@pytest.mark.slow
def test_prepacked_products_keep_their_memory_over_many_pass_shapes(tiny_model):
    """oneDNN's and ideep's caches keep a primitive per row count, 1,024 each by default: without
    cpu_linear's bound the tiny model's process grew by some 450 MB over these 400 passes of new
    row counts. A fresh interpreter, so that this process's caches (made earlier) do not count."""
    env = {key: value for key, value in os.environ.items() if key not in cpu_linear.PRIMITIVE_CACHES}
    done = subprocess.run([sys.executable, "-c", _MANY_SHAPES, str(tiny_model)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    growth_mb = float(done.stdout.split()[-1])
    assert growth_mb < 50, f"the process grew by {growth_mb:.0f} MB over 400 passes"
