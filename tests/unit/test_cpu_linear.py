"""The encoder's products as the CPU runs them: prepacked float32 equals F.linear, int8 and a
bfloat16 product between float32 activations stay close, and DTYPE=int8 is a CPU choice that
auto never makes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_pool.model import cpu_linear
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
    assert cpu_linear.products(cpu, cpu_linear.INT8)[1] is cpu_linear.int8
    name, prepare, down = cpu_linear.products(cpu, torch.float32)
    assert (name, prepare, down) == ("oneDNN prepacked", cpu_linear.prepacked, cpu_linear.prepacked)
    # int8: the feed-forward's second product stays float32, or bfloat16 where the CPU has bf16
    monkeypatch.setattr(cpu_linear, "cpu_has_fast_bf16", lambda: False)
    assert cpu_linear.products(cpu, cpu_linear.INT8)[2] == cpu_linear.prepacked
    monkeypatch.setattr(cpu_linear, "cpu_has_fast_bf16", lambda: True)
    name, _, down = cpu_linear.products(cpu, cpu_linear.INT8)
    assert "second product bfloat16" in name
    assert isinstance(down(*weights()), cpu_linear.InBfloat16)
    assert cpu_linear.products(torch.device("cuda", 0), torch.float16)[1] is cpu_linear.Dense
    with pytest.raises(ValueError, match="CPU only"):
        cpu_linear.products(torch.device("cuda", 0), cpu_linear.INT8)


def test_a_bfloat16_product_between_float32_activations():
    weight, bias = weights(256, 512)
    x = torch.randn(32, 512, generator=torch.Generator().manual_seed(2))
    product = cpu_linear.in_bfloat16(cpu_linear.Dense)(weight, bias)
    expected = F.linear(x, weight, bias)
    got = product(x)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert F.cosine_similarity(got, expected, dim=-1).min() > 0.999
    assert not torch.equal(got, expected), "the product ran in bfloat16"
    gelu = product.gelu(x)
    assert gelu.dtype == torch.float32
    assert F.cosine_similarity(gelu, F.gelu(expected), dim=-1).min() > 0.999


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
