"""The compiled attention (gpu_pool/model/native): built by the machine's compiler, as close to
float32 attention as torch's bfloat16 kernel is, over every kind of block the engine makes; the
engine serves with it on a CPU with AVX-512 BF16 and falls back to torch's kernel, saying why,
where it cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_pool.model import attention, native
from gpu_pool.model.attention import Block
from gpu_pool.model.device import cpu_flags
from gpu_pool.model.m3 import M3Model
from gpu_pool.model.native import compiler

from .test_cpu_products import ROOT, outputs

MISSING = native.NEEDED_CPU_FLAGS - cpu_flags()
needs_cpu = pytest.mark.skipif(bool(MISSING), reason=f"the CPU lacks {sorted(MISSING)}")


@pytest.fixture(scope="module")
def kernel() -> native.BlocksAttention:
    loaded, which = native.load()
    assert loaded is not None, which
    return loaded


def reference(qkv: torch.Tensor, blocks: list[Block], heads: int, dtype: torch.dtype) -> torch.Tensor:
    """torch's attention of each block in ``dtype``; rows outside the blocks stay zero."""
    context = torch.zeros(qkv.shape[0], qkv.shape[1] // 3, dtype=dtype)
    attention.attend(qkv.to(dtype), context, blocks, heads)
    return context


@needs_cpu
@pytest.mark.parametrize(("heads", "dim", "blocks"), [
    (16, 64, [Block(0, 128, 8, (0, 128))]),  # bge-m3's heads, a batch of equal lengths
    (2, 16, [Block(0, 5, 3, (0, 5)), Block(15, 1, 2, (0, 1)), Block(17, 33, 1, (0, 33))]),  # the tiny model's
    (3, 48, [Block(0, 100, 1, (0, 37)), Block(0, 100, 1, (37, 100)), Block(100, 50, 4, (0, 50))]),  # rows cut
    (2, 80, [Block(0, 300, 1, (290, 300))]),  # a long text's last rows: a 64-wide and a 16-wide output tile
])
def test_kernel_is_as_close_to_float32_as_torchs(kernel, heads, dim, blocks):
    tokens = max(b.start + b.count * b.length for b in blocks) + 3  # rows past the blocks
    generator = torch.Generator().manual_seed(heads * dim)
    qkv = (torch.randn(tokens, 3 * heads * dim, generator=generator) * 2).bfloat16()
    context = torch.full((tokens, heads * dim), 7.0, dtype=torch.bfloat16)
    assert kernel.takes(qkv, heads) and not kernel.takes(qkv.float(), heads)
    kernel(qkv, context, blocks, heads)
    exact, torchs = reference(qkv, blocks, heads, torch.float32), reference(qkv, blocks, heads, torch.bfloat16)
    inside = torch.zeros(tokens, dtype=torch.bool)
    for b in blocks:
        for text in range(b.count):
            first = b.start + text * b.length
            inside[first + b.rows[0]:first + b.rows[1]] = True
    assert (context[~inside] == 7.0).all(), "rows outside the blocks were written"
    error = (context[inside].float() - exact[inside]).abs().max().item()
    torch_error = (torchs[inside].float() - exact[inside]).abs().max().item()
    assert error <= 1.5 * torch_error + 1e-3, (error, torch_error)


@needs_cpu
def test_rounding_kernel_takes_float32_and_writes_only_the_blocks_query_rows():
    """DTYPE=int8's activations are float32: rounded to bfloat16 for the kernel, widened back; two
    calls, so that the second reuses the first's rounded copies."""
    rounding, which = native.load(rounding=True)
    assert rounding is not None and "rounded" in which, which
    heads, dim = 3, 32
    for blocks in ([Block(0, 40, 2, (0, 40)), Block(80, 100, 1, (0, 30))], [Block(0, 100, 1, (30, 100))]):
        tokens = 190
        qkv = torch.randn(tokens, 3 * heads * dim, generator=torch.Generator().manual_seed(len(blocks))) * 2
        assert rounding.takes(qkv, heads)
        context = torch.full((tokens, heads * dim), 7.0)
        rounding(qkv, context, blocks, heads)
        exact, torchs = reference(qkv, blocks, heads, torch.float32), reference(qkv, blocks, heads, torch.bfloat16)
        written = exact != 0
        assert (context[~written] == 7.0).all(), "rows outside the blocks' query rows were written"
        error = (context[written] - exact[written]).abs().max().item()
        assert error <= 1.5 * (torchs.float()[written] - exact[written]).abs().max().item() + 1e-3, error


@needs_cpu
def test_kernel_refuses_what_it_cannot_run(kernel):
    qkv = torch.zeros(4, 3 * 2 * 16, dtype=torch.bfloat16)
    assert not kernel.takes(qkv.float(), 2)
    assert not kernel.takes(torch.zeros(4, 3 * 2 * 24, dtype=torch.bfloat16), 2)  # 24-wide heads
    with pytest.raises(ValueError, match="contiguous"):
        kernel(qkv, torch.zeros(4, 32, dtype=torch.float32), [Block(0, 4, 1, (0, 4))], 2)


ASAN_CALLS = """
import ctypes, sys, torch
from gpu_pool.model.attention import Block
from gpu_pool.model.native import AddNorm, BlocksAttention, Int8Product, PackedProduct, declared
library = declared(ctypes.CDLL(sys.argv[1]))
kernel = BlocksAttention(library)
torch.set_num_threads(2)
# The products: every tile's rows and blocks, rows past a chunk, in and out of every width's tail.
for rows, out, width_in in [(1, 16, 16), (7, 80, 32), (203, 112, 96), (13, 1024, 1024)]:
    for kind in (PackedProduct, Int8Product):
        product = kind(library, torch.randn(out, width_in), torch.randn(out))
        product(torch.randn(rows, width_in)), product.gelu(torch.randn(rows, width_in))
# The layer norms: one row and many, bfloat16's and float32's sums.
norm = AddNorm(library)
for rows, width in [(1, 16), (203, 48)]:
    for kind in (torch.bfloat16, torch.float32):
        norm(torch.randn(rows, width).to(kind), torch.randn(rows, width), torch.randn(width), torch.randn(width), 1e-5)
# Each thread's scratch grows with the keys, then must grow again for wider heads.
for heads, dim, blocks in [(2, 16, [Block(0, 200, 1, (0, 200))]), (16, 64, [Block(0, 128, 2, (0, 128))]),
                           (3, 48, [Block(0, 7, 3, (0, 7)), Block(21, 333, 1, (300, 333))]),
                           (2, 80, [Block(0, 1, 1, (0, 1))])]:
    tokens = max(b.start + b.count * b.length for b in blocks)
    qkv = torch.randn(tokens, 3 * heads * dim).bfloat16()
    kernel(qkv, torch.empty(tokens, heads * dim, dtype=torch.bfloat16), blocks, heads)
print("calls done")
"""


@needs_cpu
def test_kernel_stays_in_its_memory_under_address_sanitizer(tmp_path):
    """Out-of-bounds reads and writes do not always crash; AddressSanitizer reports each one, in
    the attention kernel, the products and the layer norms (one library)."""
    runtime = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=False)
    if not Path(runtime.stdout.strip()).is_file():
        pytest.skip("gcc's AddressSanitizer runtime is not installed")
    library = compiler.build(tmp_path / "kernels-asan.so", ("-fsanitize=address", "-fno-omit-frame-pointer", "-g"))
    env = {**os.environ, "LD_PRELOAD": runtime.stdout.strip(), "ASAN_OPTIONS": "detect_leaks=0",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", ASAN_CALLS, str(library)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0 and "calls done" in done.stdout, done.stderr[-3000:]


def test_the_build_is_named_by_its_source(tmp_path, monkeypatch):
    first = compiler.library_path(tmp_path)
    monkeypatch.setattr(compiler, "SOURCES", (*compiler.SOURCES[:-1], tmp_path / "products.c"))
    (tmp_path / "products.c").write_text("int changed;\n")
    assert compiler.library_path(tmp_path) != first


@needs_cpu
def test_no_compiler_keeps_torchs_kernel_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "library_path", lambda: tmp_path / "kernels-x.so")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    loaded, which = native.load()
    assert loaded is None and "no C compiler" in which, which


def test_another_cpu_keeps_torchs_kernel_and_says_why(monkeypatch):
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    loaded, which = native.load()
    assert loaded is None and "avx512_bf16" in which, which


@needs_cpu
def test_the_bfloat16_engine_serves_with_the_kernel(tiny_model):
    """The tiny model's heads are 16 wide: the kernel runs its attention; its vectors match the
    same engine's with torch's kernel as closely as two bfloat16 attentions can."""
    served = M3Model(tiny_model, torch.device("cpu"), torch.bfloat16)
    assert served.encoder.native is not None and "native" in served.attention.reason, served.attention
    with_torch = M3Model(tiny_model, torch.device("cpu"), torch.bfloat16)
    with_torch.encoder.native = None
    lengths = [9, 17, 4, 17, 60]
    got, expected = outputs(served, lengths), outputs(with_torch, lengths)
    cosine = (got.dense * expected.dense).sum(1) / np.linalg.norm(got.dense, axis=1) / np.linalg.norm(
        expected.dense, axis=1)
    assert cosine.min() > 0.999, cosine
    assert not np.array_equal(got.dense, expected.dense), "the two engines ran the same attention"
    assert outputs(served, [3]).dense.shape == (1, served.dim)
