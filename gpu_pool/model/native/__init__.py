"""Compiled code the engine runs where torch's own is slow, on a CPU with AVX-512 BF16 and
VNNI: attention over a packed batch in bfloat16 with float32 scores (attention.c), the
encoder's matrix products in bfloat16 with float32 sums, or in int8 (products.c), and its residual
sums with their layer norms (norm.c).

torch's fused CPU attention reaches a sixth of its products' rate on such a CPU; the attention
kernel runs one layer's attention of 8 texts of 128 tokens in 0.4 of its time, about OpenVINO's.
oneDNN's bfloat16 products run a lone query's 16 rows at about 0.8 of the products kernel's rate,
and a batch's rows at its rate; fbgemm's int8 ones at 0.8–0.9 of the int8 kernel's, with one
activation scale per call where it takes one per row (docs/performance.md). All are plain C on raw pointers, built by
the machine's C compiler in about a second into one library (compiler.py: by ``make native``, in
the image's build stage, or here at load when missing). Without a compiler, or on another CPU,
``library`` says why and the engine keeps torch's attention and oneDNN's products.

Runs in:      the engine process only (its device thread, and torch's OpenMP threads).
May import:   torch, numpy, ``gpu_pool.model.device``; compiler.py the standard library only.
Owns:         the kernels' sources, their build (``compiler``) and their calls (``BlocksAttention``,
              ``AddNorm``, ``PackedProduct``, ``Int8Product``).
Entry points: ``load`` (called by ``gpu_pool.model.m3``), ``library`` (by ``gpu_pool.model.cpu_linear``);
              ``python gpu_pool/model/native/compiler.py``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from gpu_pool.model.device import cpu_flags
from gpu_pool.model.native.compiler import ISA_FLAGS, build, library_path

if TYPE_CHECKING:
    from gpu_pool.model.attention import Block

# What the compiler flags enable, as /proc/cpuinfo names it.
CPUINFO_NAMES = {"avx512bf16": "avx512_bf16", "avx512vnni": "avx512_vnni"}
NEEDED_CPU_FLAGS = frozenset(CPUINFO_NAMES.get(flag := isa.removeprefix("-m"), flag) for isa in ISA_FLAGS)
HEAD_DIM_STEP = 16  # the kernel writes a head's outputs 16 at a time


class BlocksAttention:
    """``attend(qkv, context, blocks, heads)`` of gpu_pool/model/attention.py in one native call:
    ``qkv`` [tokens, 3 * hidden] and ``context`` [tokens, hidden], both contiguous, in bfloat16; with
    ``rounding``, float32 too (int8's activations), the blocks' rows rounded to bfloat16 for the
    kernel and its outputs widened back."""

    def __init__(self, library: ctypes.CDLL, rounding: bool = False) -> None:
        self.library = library  # the layer norms' kernel too (``AddNorm``)
        self.call = library.attend_blocks
        self.types = (torch.bfloat16, torch.float32) if rounding else (torch.bfloat16,)
        # The rounded copies, kept between calls: a pass's size of fresh memory each layer costs its page faults.
        self._narrow = torch.empty(0, dtype=torch.bfloat16)

    def takes(self, qkv: torch.Tensor, heads: int) -> bool:
        """Whether the kernel can run this layer's attention: its types on the CPU, whole rows."""
        dim = qkv.shape[1] // (3 * heads)
        return qkv.dtype in self.types and qkv.device.type == "cpu" and qkv.is_contiguous() and dim % HEAD_DIM_STEP == 0

    def __call__(self, qkv: torch.Tensor, context: torch.Tensor, blocks: Sequence[Block], heads: int) -> None:
        if context.dtype != qkv.dtype or not context.is_contiguous() or context.shape[0] != qkv.shape[0]:
            raise ValueError("context must be a contiguous tensor of qkv's rows and type")
        if qkv.dtype == torch.float32:
            self._rounded(qkv, context, blocks, heads)
            return
        dim = context.shape[1] // heads
        table = np.array([(b.start, b.length, b.count, *b.rows) for b in blocks], dtype=np.int32)
        failed = self.call(qkv.data_ptr(), context.data_ptr(), table.ctypes.data, len(table), heads, dim,
                           dim ** -0.5, torch.get_num_threads())
        if failed:
            raise MemoryError("the attention kernel could not allocate its scratch memory")

    def _rounded(self, qkv: torch.Tensor, context: torch.Tensor, blocks: Sequence[Block], heads: int) -> None:
        """The blocks' texts rounded to bfloat16, attended, and their query rows widened into ``context``."""
        tokens, width = qkv.shape
        if self._narrow.numel() < tokens * (width + width // 3):
            self._narrow = torch.empty(tokens * (width + width // 3), dtype=torch.bfloat16)
        narrow = self._narrow[:tokens * width].view(tokens, width)
        out = self._narrow[tokens * width:tokens * (width + width // 3)].view(tokens, width // 3)
        for block in blocks:
            texts = slice(block.start, block.start + block.count * block.length)
            narrow[texts] = qkv[texts]
        self(narrow, out, blocks, heads)
        for block in blocks:
            for text in range(block.count):
                first = block.start + text * block.length
                rows = slice(first + block.rows[0], first + block.rows[1])
                context[rows] = out[rows]


class AddNorm:
    """``LayerNorm(x + residual)`` by norm.c, the residual sum and the norm in one pass over each
    row: ``x`` a product's output, bfloat16 or float32, the rest float32 (the activations around
    the CPU's bfloat16 and int8 products); elsewhere torch's two operators (``takes``)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.call = library.add_norm

    @staticmethod
    def takes(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> bool:
        return (x.dtype in (torch.bfloat16, torch.float32) and residual.dtype == weight.dtype == torch.float32
                and x.shape == residual.shape and x.dim() == 2 and x.shape[1] % 16 == 0 and x.device.type == "cpu"
                and x.is_contiguous() and residual.is_contiguous())

    def __call__(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 eps: float) -> torch.Tensor:
        out = torch.empty_like(residual)
        rows, width = x.shape
        failed = self.call(x.data_ptr(), x.dtype == torch.bfloat16, residual.data_ptr(), weight.data_ptr(),
                           bias.data_ptr(), eps, out.data_ptr(), rows, width, torch.get_num_threads())
        if failed:
            raise ValueError(f"the norm kernel refused {tuple(x.shape)}")
        return out


class _Product:
    """A native ``Product`` (gpu_pool/model/cpu_linear.py): ``x @ weight.T + bias`` by ``_run``,
    then GELU with ``gelu``; a weight of ``IN_STEP``'s multiple of inputs and 16's of outputs."""

    IN_STEP = 2
    width: int

    @classmethod
    def takes(cls, weight: torch.Tensor) -> bool:
        return weight.dim() == 2 and weight.shape[0] % 16 == 0 and weight.shape[1] % cls.IN_STEP == 0

    def _refuse_unless_taken(self, weight: torch.Tensor) -> None:
        if not self.takes(weight):
            raise ValueError(f"{type(self).__name__} takes weights of output width a multiple of 16 and input "
                             f"width a multiple of {self.IN_STEP}, not {tuple(weight.shape)}")

    @staticmethod
    def _packed(weight: torch.Tensor, group: int) -> torch.Tensor:
        """[out, in] as the kernel reads it: [out / 16][in / group][16][group], ``group`` inputs of
        16 columns in one 64-byte load."""
        width, width_in = weight.shape
        return weight.reshape(width // 16, 16, width_in // group, group).permute(0, 2, 1, 3).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, gelu=False)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, gelu=True)

    def _run(self, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        raise NotImplementedError


class PackedProduct(_Product):
    """``x @ weight.T + bias`` (``gelu``: then exact GELU) by products.c, the ``Product`` of
    gpu_pool/model/cpu_linear.py: the weight rounded to bfloat16 and packed once for the kernel
    (``_packed`` in pairs), the bias kept in float32; each call's input rounded to
    bfloat16 (float32 activations) and its output in bfloat16, as oneDNN's bfloat16 product
    between float32 activations gives it."""

    def __init__(self, library: ctypes.CDLL, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self._refuse_unless_taken(weight)
        self.call = library.product
        self.width = weight.shape[0]
        self.packed = self._packed(weight.to(torch.bfloat16), 2)
        self.bias = bias.to(torch.float32, copy=True)

    def _run(self, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        rows = x.to(torch.bfloat16).reshape(-1, x.shape[-1]).contiguous()
        out = torch.empty(rows.shape[0], self.width, dtype=torch.bfloat16)
        if self.call(rows.data_ptr(), rows.shape[0], rows.shape[1], self.packed.data_ptr(), self.width,
                     self.bias.data_ptr(), out.data_ptr(), 1, int(gelu), torch.get_num_threads()):
            raise ValueError(f"the products kernel refused {tuple(x.shape)} times {tuple(self.packed.shape)}")
        return out.view(*x.shape[:-1], self.width)


class Int8Product(_Product):
    """``x @ weight.T + bias`` (``gelu``: then exact GELU, in bfloat16 for the next product) by
    products.c's int8 kernel, the ``Product`` of ``DTYPE=int8``: the weight rounded to int8 per
    output channel (symmetric, each row's largest magnitude at 127) and packed once
    (``_packed`` in fours); each call's float32 input quantized to uint8 per row, over
    the row's own range (finer than one scale for a whole pass); int32 sums; float32 out."""

    IN_STEP = 16  # the rows' quantization reads 16 inputs at a time

    def __init__(self, library: ctypes.CDLL, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self._refuse_unless_taken(weight)
        self.call = library.product_int8
        weight = weight.float()
        self.width = weight.shape[0]
        self.scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
        quantized = (weight / self.scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)  # one float temporary
        self.sums = quantized.sum(dim=1, dtype=torch.int32)
        self.packed = self._packed(quantized, 4)
        self.bias = bias.to(torch.float32, copy=True)

    def _run(self, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        rows = x.to(torch.float32).reshape(-1, x.shape[-1]).contiguous()
        count, width_in = rows.shape
        quantized = torch.empty(count, width_in, dtype=torch.uint8)
        scale, zero = torch.empty(count), torch.empty(count, dtype=torch.int32)
        out = torch.empty(count, self.width, dtype=torch.bfloat16 if gelu else torch.float32)
        if self.call(rows.data_ptr(), count, width_in, self.packed.data_ptr(), self.width, self.scale.data_ptr(),
                     self.sums.data_ptr(), self.bias.data_ptr(), out.data_ptr(), int(gelu), int(gelu),
                     quantized.data_ptr(), scale.data_ptr(), zero.data_ptr(), torch.get_num_threads()):
            raise ValueError(f"the int8 products kernel refused {tuple(x.shape)} times {tuple(self.packed.shape)}")
        return out.view(*x.shape[:-1], self.width)


def library() -> tuple[ctypes.CDLL | None, str]:
    """The kernels' library, built first if need be, its calls declared; or None and why."""
    missing = NEEDED_CPU_FLAGS - cpu_flags()
    if missing:
        return None, f"the CPU lacks {', '.join(sorted(missing))}"
    path = library_path()
    try:
        if not path.exists():
            build(path)
        loaded = declared(ctypes.CDLL(str(path)))
    except (RuntimeError, OSError) as exc:
        return None, f"the native kernels are not built: {exc}"
    return loaded, path.name


def declared(loaded: ctypes.CDLL) -> ctypes.CDLL:
    """The library with its calls' types declared. ctypes lets go of the GIL for each call: the
    engine's other threads run meanwhile."""
    loaded.attend_blocks.restype = loaded.product.restype = ctypes.c_int
    pointer, number = ctypes.c_void_p, ctypes.c_int
    loaded.attend_blocks.argtypes = [pointer, pointer, pointer, number, number, number, ctypes.c_float, number]
    loaded.product.argtypes = [pointer, number, number, pointer, number, pointer, pointer, number, number, number]
    loaded.add_norm.restype = ctypes.c_int
    loaded.add_norm.argtypes = [pointer, number, pointer, pointer, pointer, ctypes.c_float, pointer, number, number,
                                number]
    loaded.product_int8.restype = ctypes.c_int
    loaded.product_int8.argtypes = [pointer, number, number, pointer, number, pointer, pointer, pointer, pointer,
                                    number, number, pointer, pointer, pointer, number]
    return loaded


def load(rounding: bool = False) -> tuple[BlocksAttention | None, str]:
    """The attention kernel, or None; and a line for the load log saying which and why.
    ``rounding``: it also takes float32 activations, rounded to bfloat16 (``DTYPE=int8``)."""
    loaded, which = library()
    if loaded is None:
        return None, f"torch's fused kernel ({which})"
    rounded = ", float32 rounded to bfloat16 for it" if rounding else ""
    return BlocksAttention(loaded, rounding), f"native bfloat16 kernel ({which}){rounded}"
