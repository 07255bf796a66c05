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
    ``qkv`` bfloat16 [tokens, 3 * hidden] and ``context`` bfloat16 [tokens, hidden], both contiguous."""

    def __init__(self, library: ctypes.CDLL) -> None:
        # ctypes lets go of the GIL for the call: the engine's other threads run meanwhile.
        self.call = library.attend_blocks
        self.call.restype = ctypes.c_int
        self.call.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_float, ctypes.c_int]

    @staticmethod
    def takes(qkv: torch.Tensor, heads: int) -> bool:
        """Whether the kernel can run this layer's attention: bfloat16 on the CPU, whole rows."""
        dim = qkv.shape[1] // (3 * heads)
        return (qkv.dtype == torch.bfloat16 and qkv.device.type == "cpu" and qkv.is_contiguous()
                and dim % HEAD_DIM_STEP == 0)

    def __call__(self, qkv: torch.Tensor, context: torch.Tensor, blocks: Sequence[Block], heads: int) -> None:
        if context.dtype != qkv.dtype or not context.is_contiguous() or context.shape[0] != qkv.shape[0]:
            raise ValueError("context must be a contiguous tensor of qkv's rows and type")
        dim = context.shape[1] // heads
        table = np.array([(b.start, b.length, b.count, *b.rows) for b in blocks], dtype=np.int32)
        failed = self.call(qkv.data_ptr(), context.data_ptr(), table.ctypes.data, len(table), heads, dim,
                           dim ** -0.5, torch.get_num_threads())
        if failed:
            raise MemoryError("the attention kernel could not allocate its scratch memory")


def load() -> tuple[BlocksAttention | None, str]:
    """The kernel, built first if need be, or None; and a line for the load log saying which and why."""
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
    return BlocksAttention(library), f"native bfloat16 kernel ({path.name})"
