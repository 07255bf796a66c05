"""The compiled products (gpu_pool/model/native/products.c): bfloat16 as close to float32 as
oneDNN's bfloat16 product over every tile the kernel has (1 to 6 rows by 1 to 4 blocks of 16
columns, and rows past a task's chunk), int8 closer than fbgemm's, GELU exact to float32's
precision, and the bfloat16 and int8 engines serving with them where the CPU has AVX-512 BF16
and VNNI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.cpu import compare
from gpu_pool.model import cpu_linear, native
from gpu_pool.model.device import cpu_flags
from gpu_pool.model.m3 import M3Model

from .test_cpu_products import outputs

MISSING = native.NEEDED_CPU_FLAGS - cpu_flags()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the CPU lacks {sorted(MISSING)}")


@pytest.fixture(scope="module")
def kernels():
    loaded, which = native.library()
    assert loaded is not None, which
    return loaded


def weights(out: int, width_in: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(out, width_in, generator=generator) * 0.05, torch.randn(out, generator=generator)


@pytest.mark.parametrize(("rows", "out", "width_in"), [
    (1, 16, 2), (5, 48, 64), (6, 64, 32), (7, 80, 1024), (16, 1024, 1024), (16, 4096, 256),
    (203, 112, 96),  # three chunks of rows, the last one of 11; a panel of 3 blocks at the end
])
def test_products_are_as_close_to_float32_as_onednns(kernels, rows, out, width_in):
    weight, bias = weights(out, width_in, rows)
    x = torch.randn(rows, width_in, generator=torch.Generator().manual_seed(out)) * 2
    ours = native.PackedProduct(kernels, weight, bias)
    onednn = cpu_linear.in_bfloat16(cpu_linear.Prepacked.of)(weight, bias)
    exact = F.linear(x, weight, bias)
    for got, theirs, expected in ((ours(x), onednn(x), exact), (ours.gelu(x), onednn.gelu(x), F.gelu(exact))):
        assert got.dtype == torch.bfloat16 and got.shape == (rows, out)
        error = (got.float() - expected).abs().max().item()
        assert error <= 1.5 * (theirs.float() - expected).abs().max().item() + 1e-3, error
    torch.testing.assert_close(ours(x.bfloat16()), ours(x), rtol=0, atol=0)  # an input already rounded: the same


@pytest.mark.parametrize(("rows", "out", "width_in"), [(1, 16, 16), (7, 80, 32), (16, 1024, 1024), (203, 112, 96)])
def test_int8_products_are_closer_to_float32_than_fbgemms(kernels, rows, out, width_in):
    """Per-row scales against fbgemm's one scale per call; a row of zeros gives the bias."""
    weight, bias = weights(out, width_in, rows)
    x = torch.randn(rows, width_in, generator=torch.Generator().manual_seed(out)) * 2
    x[0] *= 30  # one loud row: it coarsens fbgemm's scale for every row, ours for its own only
    x[-1] = 0
    ours, fbgemm = native.Int8Product(kernels, weight, bias), cpu_linear.int8(weight, bias)
    exact = F.linear(x, weight, bias)
    got = ours(x)
    assert got.dtype == torch.float32 and got.shape == (rows, out)
    torch.testing.assert_close(got[-1], bias, rtol=0, atol=1e-6)
    error, theirs = ((y - exact).abs().amax(dim=1) / exact.abs().amax(dim=1) for y in (got, fbgemm(x)))
    assert (error <= 0.02).all() and error.mean() <= theirs.mean(), (error, theirs)
    gelu = ours.gelu(x)
    assert gelu.dtype == torch.bfloat16  # the next product's input
    torch.testing.assert_close(gelu.float(), F.gelu(got), rtol=1e-2, atol=1e-2)


def test_gelu_is_exact_to_float32(kernels):
    """The kernel's float32 output (the engine asks for bfloat16) shows its erf's precision."""
    width_in, out = 2, 1024
    x = torch.tensor([[1.0, 0.0]], dtype=torch.bfloat16)
    inputs = torch.linspace(-12, 12, out)  # GELU's whole shape: 0 far left, x far right
    weight = torch.stack([inputs, torch.zeros(out)], dim=1).to(torch.bfloat16)  # one row: each input as is
    packed = native.PackedProduct(kernels, weight, torch.zeros(out))
    result = torch.empty(1, out)
    assert kernels.product(x.data_ptr(), 1, width_in, packed.packed.data_ptr(), out, packed.bias.data_ptr(),
                           result.data_ptr(), 0, 1, 1) == 0
    exact = F.gelu(weight[:, 0].double())
    assert ((result[0].double() - exact).abs() <= 1e-6 * (1 + exact.abs())).all()


def test_rows_of_a_chunk_and_leading_dimensions(kernels):
    weight, bias = weights(32, 64, 1)
    product = native.PackedProduct(kernels, weight, bias)
    rows = torch.randn(40, 64)[10:26]  # a step's chunk: a view into the pass's rows
    torch.testing.assert_close(product(rows), product(rows.clone()), rtol=0, atol=0)
    assert product(torch.randn(2, 3, 64)).shape == (2, 3, 32)
    assert product(torch.randn(0, 64)).shape == (0, 32)


def test_shapes_it_does_not_take_fall_back_to_onednn(kernels):
    assert not native.PackedProduct.takes(torch.zeros(24, 64)) and not native.PackedProduct.takes(torch.zeros(32, 63))
    assert native.Int8Product.takes(torch.zeros(32, 64)) and not native.Int8Product.takes(torch.zeros(32, 40))
    with pytest.raises(ValueError, match="output width a multiple of 16"):
        native.PackedProduct(kernels, torch.zeros(24, 64), torch.zeros(24))
    prepare = cpu_linear.packed_by(kernels, native.PackedProduct, cpu_linear.in_bfloat16(cpu_linear.Prepacked.of))
    assert isinstance(prepare(*weights(24, 64, 0)), cpu_linear.InBfloat16)
    assert isinstance(prepare(*weights(32, 64, 0)), native.PackedProduct)


def test_the_bfloat16_engine_serves_with_the_products(tiny_model, monkeypatch):
    """``auto`` on this CPU: every product of the tiny model run by the bfloat16 kernel, and
    ``DTYPE=int8``'s by the int8 one; the vectors as close to float32 as oneDNN's products keep them,
    and not equal to them."""
    served = M3Model(tiny_model, torch.device("cpu"), torch.bfloat16)
    assert "native bfloat16 products" in served.products, served.products
    layer = served.encoder.layers[0]
    assert all(isinstance(p, native.PackedProduct) for p in (layer.qkv, layer.attention_out, layer.intermediate,
                                                              layer.output, served.colbert_linear))
    int8 = M3Model(tiny_model, torch.device("cpu"), cpu_linear.INT8).encoder.layers[0]
    assert isinstance(int8.qkv, native.Int8Product) and isinstance(int8.output, native.Int8Product)
    figures = compare(tiny_model, "bfloat16", documents=30, queries=10, threads=1)
    assert figures["dense_cosine_min"] >= 0.999 and figures["sparse_cosine_min"] >= 0.999, figures
    assert figures["colbert_cosine_mean"] >= 0.999, figures
    monkeypatch.setattr(native, "library", lambda: (None, "not built"))
    with_onednn = M3Model(tiny_model, torch.device("cpu"), torch.bfloat16)
    assert "oneDNN" in with_onednn.products or "F.linear" in with_onednn.products, with_onednn.products
    lengths = [9, 17, 4, 60]
    got, expected = outputs(served, lengths), outputs(with_onednn, lengths)
    cosine = (got.dense * expected.dense).sum(1) / np.linalg.norm(got.dense, axis=1) / np.linalg.norm(
        expected.dense, axis=1)
    assert cosine.min() > 0.999, cosine
    assert not np.array_equal(got.dense, expected.dense), "the two engines ran the same products"
