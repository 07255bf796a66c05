"""The encoder's products as the CPU runs them: prepacked float32 equals F.linear, int8 and a
bfloat16 product between float32 activations stay close, and DTYPE=int8 is a CPU choice that
auto never makes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_pool.model import cpu_linear, native
from gpu_pool.model.device import resolve_dtype


def weights(rows: int = 48, inputs: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, inputs, generator=generator) * 0.05, torch.randn(rows, generator=generator) * 0.1


@pytest.mark.parametrize("rows", [1, 16, 300])
def test_prepacked_float32_equals_f_linear_with_and_without_gelu(rows):
    weight, bias = weights()
    x = torch.randn(rows, 64)
    product = cpu_linear.Prepacked.of(weight, bias)
    torch.testing.assert_close(product(x), F.linear(x, weight, bias), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(product.gelu(x), F.gelu(F.linear(x, weight, bias)), rtol=1e-6, atol=1e-6)


def test_prepacked_takes_a_chunk_of_rows():
    """A step's chunk is a view into the pass's rows."""
    weight, bias = weights()
    rows = torch.randn(40, 64)[10:26]
    torch.testing.assert_close(cpu_linear.Prepacked.of(weight, bias)(rows), F.linear(rows, weight, bias),
                               rtol=1e-6, atol=1e-6)


def test_int8_stays_close_to_float32():
    weight, bias = weights(256, 512)
    x = torch.randn(32, 512, generator=torch.Generator().manual_seed(1))
    expected = F.linear(x, weight, bias)
    got = cpu_linear.int8(weight, bias)(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert F.cosine_similarity(got, expected, dim=-1).min() > 0.998
    assert not torch.equal(got, expected), "the product ran in int8"
    torch.testing.assert_close(cpu_linear.int8(weight, bias).gelu(x), F.gelu(got))


def test_products_chosen_by_device_and_dtype(monkeypatch):
    cpu = torch.device("cpu")
    f32, bf16 = torch.float32, torch.bfloat16
    # Without the native kernels (gpu_pool/model/native: tests/integration/test_native_products.py)
    monkeypatch.setattr(native, "library", lambda: (None, "not built"))
    int8 = cpu_linear.products(cpu, cpu_linear.INT8)
    assert int8.prepare is cpu_linear.int8 and (int8.activations, int8.table) == (f32, f32)
    assert cpu_linear.products(cpu, f32) == ("oneDNN prepacked", cpu_linear.prepacked, cpu_linear.prepacked, f32, f32)
    # int8: the feed-forward's second product stays float32, or bfloat16 where the CPU has bf16
    monkeypatch.setattr(cpu_linear, "cpu_has_fast_bf16", lambda: False)
    assert cpu_linear.products(cpu, cpu_linear.INT8).prepare_down == cpu_linear.prepacked
    monkeypatch.setattr(cpu_linear, "cpu_has_fast_bf16", lambda: True)
    int8 = cpu_linear.products(cpu, cpu_linear.INT8)
    assert "second product bfloat16" in int8.name
    assert isinstance(int8.prepare_down(*weights()), cpu_linear.InBfloat16)
    # bfloat16 products on a CPU run between float32 activations; the embedding table stays bfloat16
    monkeypatch.setattr(cpu_linear, "_prepacks", lambda dtype: True)
    on_cpu = cpu_linear.products(cpu, bf16)
    assert (on_cpu.activations, on_cpu.table) == (f32, bf16)
    assert all(isinstance(prepare(*weights()), cpu_linear.InBfloat16) for prepare in on_cpu[1:3])
    cuda = cpu_linear.products(torch.device("cuda", 0), torch.float16)
    assert cuda.prepare is cpu_linear.Dense and cuda.activations == cuda.table == torch.float16
    with pytest.raises(ValueError, match="CPU only"):
        cpu_linear.products(torch.device("cuda", 0), cpu_linear.INT8)


def test_a_bfloat16_product_between_float32_activations():
    weight, bias = weights(256, 512)
    x = torch.randn(32, 512, generator=torch.Generator().manual_seed(2))
    product = cpu_linear.in_bfloat16(cpu_linear.Dense)(weight, bias)
    expected = F.linear(x, weight, bias)
    got = product(x)
    # bfloat16 out: the residual sum that takes it widens it to float32
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    assert (got + expected).dtype == torch.float32
    assert F.cosine_similarity(got.float(), expected, dim=-1).min() > 0.999
    torch.testing.assert_close(product(x.bfloat16()), got, rtol=0, atol=0)  # an input already rounded: the same
    gelu = product.gelu(x)
    assert gelu.dtype == torch.bfloat16
    assert F.cosine_similarity(gelu.float(), F.gelu(expected), dim=-1).min() > 0.999


def test_int8_only_when_asked():
    assert resolve_dtype("int8", torch.device("cpu")) is cpu_linear.INT8
    assert resolve_dtype("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)


def test_the_dtype_setting_takes_int8():
    from embsvc.config import load_settings

    assert load_settings({"API_TOKEN": "a-real-token-of-enough-length", "DTYPE": "int8"}, env_file=None).dtype == "int8"


def test_only_weights_large_enough_are_prepacked():
    small, bias = weights(32, 96)
    assert isinstance(cpu_linear.prepacked(small, bias), cpu_linear.Dense)
    large, bias = weights(256, cpu_linear.PREPACK_MIN_WEIGHTS // 256)
    assert isinstance(cpu_linear.prepacked(large, bias), cpu_linear.Prepacked)
