"""The compiled residual sum and layer norm (gpu_pool/model/native/norm.c): torch's
``F.layer_norm(x + residual)`` to float32's rounding, for a product's bfloat16 or float32 output,
and what the CPU engine's layers run where the kernels are built."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_pool.model import cpu_linear, native
from gpu_pool.model.m3 import M3Model

from .test_native_products import kernels, pytestmark  # noqa: F401 - the library's fixture, the CPU's skip


@pytest.fixture(scope="module")
def add_norm(kernels):  # noqa: F811 - the fixture imported above
    return native.AddNorm(kernels)


@pytest.mark.parametrize("kind", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "width"), [(1, 16), (7, 48), (203, 1024)])
def test_the_kernel_gives_torchs_norm_of_the_sum(add_norm, kind, rows, width):
    generator = torch.Generator().manual_seed(rows * width)
    x = torch.randn(rows, width, generator=generator).to(kind)
    # A residual far from zero on average: the variance is taken about the mean, not as E[x²] - mean².
    residual = torch.randn(rows, width, generator=generator) * 3 + 50
    weight, bias = torch.randn(width, generator=generator), torch.randn(width, generator=generator)
    got = add_norm(x, residual, weight, bias, 1e-5)
    expected = F.layer_norm(x.float() + residual, (width,), weight, bias, eps=1e-5)
    assert got.dtype == torch.float32 and got.shape == (rows, width)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5)


def test_the_kernel_takes_only_what_it_can_read(add_norm):
    rows = torch.zeros(4, 32)
    weight = torch.ones(32)
    assert add_norm.takes(rows.bfloat16(), rows, weight)
    assert not add_norm.takes(rows.half(), rows, weight)  # neither bfloat16 nor float32
    assert not add_norm.takes(torch.zeros(4, 24), torch.zeros(4, 24), torch.ones(24))  # not 16's multiple
    assert not add_norm.takes(torch.zeros(4, 64)[:, :32], rows, weight)  # not contiguous
    assert not add_norm.takes(rows, rows.bfloat16(), weight)  # the residual float32 only


@pytest.mark.parametrize("dtype", [torch.bfloat16, cpu_linear.INT8])
def test_the_cpu_engines_layers_run_it(tiny_model, dtype):
    model = M3Model(tiny_model, torch.device("cpu"), dtype)
    assert all(isinstance(layer.add_norm, native.AddNorm) for layer in model.encoder.layers)
    float32 = M3Model(tiny_model, torch.device("cpu"), torch.float32)  # the parity path: torch's operators
    assert all(layer.add_norm is None for layer in float32.encoder.layers)
