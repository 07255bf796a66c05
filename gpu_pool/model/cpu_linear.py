"""The encoder's matrix products, each weight prepared once at load for the kernel that runs it.

A product is a callable ``x -> x @ weight.T + bias`` with ``gelu`` (the same, then exact GELU),
so that the encoder's steps (gpu_pool/model/xlmr.py) need not know how it runs:

- ``Dense``: ``F.linear`` on the weight as transformers loaded it (CUDA, and the reference);
- ``Prepacked`` (the CPU in float32 or bfloat16): the weight reordered once into oneDNN's
  blocked layout (what torch inductor's freezing and IPEX do), GELU fused into the product.
  ``F.linear`` hands the row-major weight to the BLAS, which repacks it on every call: for a
  16-token query that repacking is most of the memory read per layer (micro-benchmark on
  24 distinct 1024×4096 weights, 16 rows, 2 threads: 2.4× faster prepacked, same bits in float32);
- ``InBfloat16`` around oneDNN's (the CPU in bfloat16): the products run between float32
  activations; the embeddings' sum, the residual sums and the norms stay float32, as OpenVINO
  keeps them. Against bfloat16 throughout, on the full model in process: a dense cosine to
  float32's of 0.99994 at the least instead of 0.99973 (24 texts), for 1 to 2 % more time
  (8×128 1,739 against 1,718 ms; docs/performance.md, "bfloat16's precision");
- ``native.PackedProduct`` (the CPU in bfloat16, where gpu_pool/model/native builds and the CPU
  has AVX-512 BF16 and VNNI): the engine's own kernel between the same float32 activations, the
  weight packed once for ``vdpbf16ps``; a 16-row product in 0.8 of oneDNN's time, a batch's at
  its rate (docs/performance.md, "The native products");
- ``native.Int8Product`` (``DTYPE=int8`` where the native kernels run): int8 weights per output
  channel, each row of activations quantized to uint8 over its own range, ``vpdpbusd``; faster
  than fbgemm and closer to float32, so that the feed-forward's second product and the ColBERT
  head run in int8 too (docs/performance.md, "The native products");
- ``Int8`` (``DTYPE=int8`` elsewhere, CPU only): dynamic quantization through torch's own quantized
  linear (fbgemm): weights int8 per output channel, each call's activations quantized per
  tensor on the fly, accumulated in int32 and returned in float32. The feed-forward's second
  product stays in floating point (prepacked; ``InBfloat16`` on a CPU with bf16, else float32):
  its input, GELU's output, is the most skewed, and per-tensor scales over a whole pass let one
  large token coarsen the rest (full model, int8 against float32: ColBERT rows' cosine min
  0.9949 with it in int8, 0.9969 without; dense 0.9984, 0.9989).

``products(device, dtype)`` chooses, and falls back to ``Dense`` where the installed torch or
the CPU lacks the kernel (oneDNN's bfloat16 reorder needs AVX-512 or AVX-NE-CONVERT); its
``Products`` also say in which type the activations and the embedding table are kept.
"""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from gpu_pool.model import native
from gpu_pool.model.device import Device, cpu_has_fast_bf16

log = logging.getLogger("gpu_pool.engine")

# torch's own name for the int8 "type" of the DTYPE setting: the encoder runs float32 around it.
INT8 = torch.qint8


class Product(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [rows, in] times the weight, plus the bias: [rows, out]."""
        ...

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        """The product, then exact (erf) GELU."""
        ...


Prepare = Callable[[torch.Tensor, torch.Tensor], Product]


@dataclass(frozen=True)
class Dense:
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(F.linear(x, self.weight, self.bias))


@dataclass(frozen=True)
class Prepacked:
    packed: torch.Tensor  # oneDNN's blocked layout of the [out, in] weight (an opaque mkldnn tensor)
    bias: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor) -> Prepacked:
        # No batch-size hint: one layout serves every pass's row count. The bias copied: a view
        # would keep transformers' map of the weights file (gpu_pool/model/xlmr.py, ``_own``).
        return cls(torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None), bias.clone())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return out

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        # "none": GELU's exact (erf) form, the one XLM-R uses.
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], "none")
        return out


@dataclass(frozen=True)
class InBfloat16:
    """A bfloat16 product between float32 activations (every product of ``DTYPE=bfloat16`` on a
    CPU; int8's feed-forward second product on a CPU with bf16, where it runs at 2-2.5 times
    float32's rate). Its input is rounded to bfloat16 (already so: attention's output, the
    feed-forward's middle), its output stays bfloat16: the residual sum that takes it widens it
    to float32 on the way, and the next product or attention would round it again."""

    product: Product  # with bfloat16 weights

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x.to(torch.bfloat16))

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        return self.product.gelu(x.to(torch.bfloat16))


def in_bfloat16(prepare: Prepare) -> Prepare:
    """``prepare`` over the weights rounded to bfloat16, its product between float32 activations."""
    return lambda weight, bias: InBfloat16(prepare(weight.to(torch.bfloat16), bias.to(torch.bfloat16)))


@dataclass(frozen=True)
class Int8:
    packed: object  # torch's packed int8 weight and float32 bias (LinearPackedParamsBase)

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor) -> Int8:
        weight = weight.float()
        # Symmetric per output channel: each row's largest magnitude maps to 127.
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        zero_points = torch.zeros(len(scales), dtype=torch.long)
        with warnings.catch_warnings():
            # torch 2.13 marks its quantized tensors deprecated (for torchao); the packed linear is
            # still its int8 CPU kernel, and a test fails the day the ops are gone.
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        return cls(torch.ops.quantized.linear_prepack(quantized, bias.float().clone()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range=False: all 8 bits of the activations. Measured on AVX2 (no VNNI), 64 rows
        # into a 4096×1024 weight: cosine to float32 0.99993 against 0.99983 with 7 bits (GELU's
        # outputs), 0.9984 against 0.9948 for heavy-tailed inputs.
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(x, self.packed, False)
        return out

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self(x))


# A prepacked product keeps a primitive per row count it has run, in two caches (oneDNN's and
# ideep's), each of 1,024 by default: with packed passes, whose row counts rarely repeat, the
# tiny model, prepacked, grew by 580 MB in 1,200 passes (past the soak's 10 % in 15 s). 64 of each
# (16 row counts of the four kinds of product) bounds it (+6 MB); an operator's setting wins.
# Read when the first primitive is made: this module is imported before any product runs.
PRIMITIVE_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "64"}
for _name, _capacity in PRIMITIVE_CACHES.items():
    os.environ.setdefault(_name, _capacity)


class Products(NamedTuple):
    """How the encoder runs on a device in a dtype (``products``)."""

    name: str  # for the load log
    prepare: Prepare  # every product's weight but the feed-forward's second (and the ColBERT head's)
    prepare_down: Prepare  # the feed-forward's second product and the ColBERT head: floating point but in native int8
    activations: torch.dtype  # of the embeddings' sum, the residual sums and the norms (their weights too)
    table: torch.dtype  # of the embedding table: the largest tensor, kept as small as its products' type


def products(device: torch.device | Device, dtype: torch.dtype) -> Products:
    """How the encoder's weights are prepared on ``device`` in ``dtype`` (``INT8``: the CPU's
    int8 products), and the types around them. An accelerator's products are ``F.linear``'s,
    also where its tensors live in host memory (the simulated device's)."""
    on_host = Device.of(device).accelerator is None
    if dtype == INT8:
        if not on_host:
            raise ValueError(f"DTYPE=int8 runs on the CPU only, not on {Device.of(device).name}")
        down_type = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        down = products(device, down_type)
        # Between int8's float32 activations; bfloat16 products that fall back to F.linear need the wrapper too.
        prepare_down = down.prepare if down.activations == torch.float32 else in_bfloat16(down.prepare)
        kernels, which = native.library()
        if kernels is not None:  # per-row scales: every product in int8 (docs/performance.md, "The native products")
            return Products(f"native int8 products ({which}), activations quantized per row",
                            packed_by(kernels, native.Int8Product, int8),
                            packed_by(kernels, native.Int8Product, prepare_down), torch.float32, torch.float32)
        return Products(f"int8 dynamic quantized linear (fbgemm); the feed-forward's second product "
                        f"{str(down_type).removeprefix('torch.')}, {down.name}", int8, prepare_down,
                        torch.float32, torch.float32)
    if on_host and dtype == torch.bfloat16:
        kernels, which = native.library()
        if kernels is not None:
            prepare = packed_by(kernels, native.PackedProduct,
                                in_bfloat16(prepacked) if _prepacks(dtype) else in_bfloat16(Dense))
            return Products(f"native bfloat16 products ({which}) between float32 activations", prepare, prepare,
                            torch.float32, dtype)
        log.info("No native products: %s", which)
    if on_host and _prepacks(dtype):
        if dtype == torch.bfloat16:
            return Products("oneDNN prepacked, bfloat16 between float32 activations", in_bfloat16(prepacked),
                            in_bfloat16(prepacked), torch.float32, dtype)
        return Products("oneDNN prepacked", prepacked, prepacked, dtype, dtype)
    return Products("F.linear", Dense, Dense, dtype, dtype)


# Smaller weights run through F.linear: oneDNN's cost per call outweighs the weight read it saves
# (the tiny model, 32 wide: a pass of 8 short texts 2,054 µs prepacked against 1,744 µs; the full
# model, 1,024 wide, every weight at least 1,024²: a 16-token query 236 against 508 ms).
PREPACK_MIN_WEIGHTS = 1 << 16


def prepacked(weight: torch.Tensor, bias: torch.Tensor) -> Product:
    """``Prepacked`` where the weight is large enough to pay for it, else ``Dense``."""
    return Prepacked.of(weight, bias) if weight.numel() >= PREPACK_MIN_WEIGHTS else Dense(weight, bias)


def packed_by(kernels: ctypes.CDLL, kind: type[native.PackedProduct | native.Int8Product],
              otherwise: Prepare) -> Prepare:
    """A native product of ``kind`` where its kernel takes the weight's shape, else ``otherwise``'s."""
    def prepare(weight: torch.Tensor, bias: torch.Tensor) -> Product:
        return kind(kernels, weight, bias) if kind.takes(weight) else otherwise(weight, bias)
    return prepare


def int8(weight: torch.Tensor, bias: torch.Tensor) -> Product:
    torch.backends.quantized.engine = "fbgemm"
    return Int8.of(weight, bias)


def _prepacks(dtype: torch.dtype) -> bool:
    """Whether oneDNN prepacks and runs a weight of ``dtype`` here, exactly as ``F.linear`` would."""
    if not torch._C._has_mkldnn:
        return False
    weight, bias = torch.randn(24, 16).to(dtype), torch.randn(24).to(dtype)
    x = torch.randn(5, 16).to(dtype)
    try:
        got = Prepacked.of(weight, bias)(x)
    except (RuntimeError, NotImplementedError) as exc:
        log.info("No prepacked %s products here: %s", str(dtype).removeprefix("torch."), str(exc).splitlines()[0])
        return False
    return bool(torch.allclose(got.float(), F.linear(x, weight, bias).float(), rtol=1e-2, atol=1e-2))
