"""Compiled code the engine runs where torch's own is slow: attention over a packed batch in
bfloat16 with float32 scores (attention.c), on a CPU with AVX-512 BF16.

torch's fused CPU attention reaches a sixth of its products' rate on such a CPU; this kernel
runs one layer's attention of 8 texts of 128 tokens in 0.4 of its time, about OpenVINO's
(docs/performance.md). It is plain C on raw pointers, built by the machine's C compiler in about a
second (compiler.py: by ``make native``, in the image's build stage, or here at load when missing).
Without a compiler, or on another CPU, ``load`` says why and the engine keeps torch's kernel.

Runs in:      the engine process only (its device thread, and torch's OpenMP threads).
May import:   torch, numpy, ``gpu_pool.model.device``; compiler.py the standard library only.
Owns:         attention.c, its build (``compiler``) and its call (``BlocksAttention``).
Entry points: ``load`` (called by ``gpu_pool.model.m3``); ``python gpu_pool/model/native/compiler.py``.
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
NEEDED_CPU_FLAGS = frozenset(flag.removeprefix("-m").replace("avx512bf16", "avx512_bf16") for flag in ISA_FLAGS)
HEAD_DIM_STEP = 16  # the kernel writes a head's outputs 16 at a time


class BlocksAttention:
    """``attend(qkv, context, blocks, heads)`` of gpu_pool/model/attention.py in one native call:
    ``qkv`` [tokens, 3 * hidden] and ``context`` [tokens, hidden], both contiguous, in bfloat16; with
    ``rounding``, float32 too (int8's activations), the blocks' rows rounded to bfloat16 for the
    kernel and its outputs widened back."""

    def __init__(self, library: ctypes.CDLL, rounding: bool = False) -> None:
        # ctypes lets go of the GIL for the call: the engine's other threads run meanwhile.
        self.call = library.attend_blocks
        self.call.restype = ctypes.c_int
        self.call.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_float, ctypes.c_int]
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


def load(rounding: bool = False) -> tuple[BlocksAttention | None, str]:
    """The kernel, built first if need be, or None; and a line for the load log saying which and why.
    ``rounding``: it also takes float32 activations, rounded to bfloat16 (``DTYPE=int8``)."""
    missing = NEEDED_CPU_FLAGS - cpu_flags()
    if missing:
        return None, f"torch's fused kernel (the CPU lacks {', '.join(sorted(missing))})"
    path = library_path()
    try:
        if not path.exists():
            build(path)
        library = ctypes.CDLL(str(path))
    except (RuntimeError, OSError) as exc:
        return None, f"torch's fused kernel (the native kernel is not built: {exc})"
    rounded = ", float32 rounded to bfloat16 for it" if rounding else ""
    return BlocksAttention(library, rounding), f"native bfloat16 kernel ({path.name}){rounded}"
