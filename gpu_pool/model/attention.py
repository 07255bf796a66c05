"""Attention over a packed batch, where each text attends to itself only: two ways, chosen once at load.

- **per length** (the CPU; CUDA in float32): texts of equal length lie next to each
  other (the planner sorts by length), and each run of them is one call of PyTorch's
  fused ``scaled_dot_product_attention`` without a mask. A pass of many distinct
  lengths makes many calls per layer, which the CPU does not mind (each call has real
  work) but a GPU does: each is a kernel launch and a few Python operations. In bfloat16 and
  int8 on a CPU with AVX-512 BF16, the engine's own kernel (gpu_pool/model/native) takes a
  whole part in one call instead: torch's reaches a sixth of its products' rate there.
- **varlen** (CUDA in float16 or bfloat16): one call per layer over the whole packed
  batch of the flash-attention kernel that torch ships, told where each text starts by
  ``cu_seqlens`` (the running sum of the lengths). Flash kernels take half-precision
  types only, so float32 on CUDA keeps the per-length path, which is also what the
  parity check against FlagEmbedding runs.

On the per-length path a pass's attention may run in **parts** (``Spans.parts``), so that
the engine can run a waiting query between two: attention costs a text's length squared,
and one long text's attention would otherwise be one step several times longer than a
feed-forward half. A text too long for one part is cut by query rows: each row's
attention needs its own query and all the text's keys, so the rows come out the same.

``select`` makes the choice from the device, the dtype and what the installed torch
offers (the kernel's name and arguments moved between torch 2.11 and 2.13), tries the
kernel once on the device against the per-length path, and says why it chose; the
lengths-derived inputs (``Spans``) are built once per pass, not once per layer.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpu_pool.model.native import BlocksAttention

PER_LENGTH = "per-length"
VARLEN = "varlen"
HALF_TYPES = (torch.float16, torch.bfloat16)

# q, k, v: [tokens, heads, head_dim]; cu_seqlens: int32 [texts + 1] on the device; the longest text.
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Block:
    """``count`` texts of ``length`` tokens one after another from token ``start``, and the
    query rows of each (``rows``: from, to) that one fused call computes."""

    start: int
    length: int
    count: int
    rows: tuple[int, int]


class Spans(list[int]):
    """A pass's text lengths, in order, with what attention needs of them worked out once per
    pass: its parts, blocks of equal lengths (per-length path), or ``cu_seqlens`` already on
    the device and the longest length (varlen path, in one part). A plain ``list[int]`` elsewhere.
    ``part_scores``: the most attention scores (query rows × keys) in one part; None: one part."""

    __slots__ = ("cu_seqlens", "max_length", "parts")

    def __init__(self, lengths: Sequence[int], cu_seqlens: torch.Tensor | None = None,
                 part_scores: int | None = None) -> None:
        super().__init__(lengths)
        self.cu_seqlens = cu_seqlens
        self.max_length = max(self, default=0)
        self.parts = attention_parts(self, part_scores)


@dataclass(frozen=True)
class Choice:
    path: str  # PER_LENGTH or VARLEN
    kernel_name: str  # which varlen kernel; "" on the per-length path
    reason: str  # why, for the load log


def cu_seqlens(lengths: Sequence[int]) -> np.ndarray:
    """Where each text starts in the packed row, then the total: int32 [texts + 1], as flash kernels take it."""
    return np.array(list(itertools.accumulate(lengths, initial=0)), dtype=np.int32)


def attention_parts(lengths: Sequence[int], part_scores: int | None) -> list[list[Block]]:
    """The blocks of each part, in order: whole texts while they fit in ``part_scores``
    (texts of equal length next to each other in one block), a text that does not fit in
    the rest of a part cut by query rows (at least one row a part). None: one part."""
    limit = part_scores or sum(length * length for length in lengths) or 1
    parts: list[list[Block]] = [[]]
    used = start = 0
    for length in lengths:
        row = 0
        while row < length:
            left, room = (length - row) * length, limit - used
            # A new part: when the rest of the text fits in one but not here, or not a row fits here.
            if parts[-1] and left > room and (left <= limit or room < length):
                parts.append([])
                used = 0
            rows = min(length - row, max(1, (limit - used) // length))
            _add(parts[-1], Block(start, length, 1, (row, row + rows)))
            used += rows * length
            row += rows
        start += length
    return parts


def _add(blocks: list[Block], block: Block) -> None:
    """Append ``block``, joined to the last one when both are whole texts of one length next to each other."""
    last = blocks[-1] if blocks else None
    whole = block.rows == (0, block.length)
    if (last is not None and whole and last.rows == (0, last.length) and last.length == block.length
            and last.start + last.count * last.length == block.start):
        blocks[-1] = Block(last.start, last.length, last.count + 1, last.rows)
    else:
        blocks.append(block)


def wants_varlen(device_type: str, dtype: torch.dtype) -> str:
    """Why the per-length path must be kept on this device and dtype; "" when varlen may be tried."""
    if device_type != "cuda":
        return f"{device_type} runs fused attention per length"
    if dtype not in HALF_TYPES:
        return f"flash kernels take float16/bfloat16 only, not {str(dtype).removeprefix('torch.')}"
    return ""


def per_length(qkv: torch.Tensor, spans: Spans, heads: int) -> torch.Tensor:
    """``qkv``: [tokens, 3 * hidden]; every part at once. Returns [tokens, hidden]."""
    context = new_context(qkv)
    for blocks in spans.parts:
        attend(qkv, context, blocks, heads)
    return context


def new_context(qkv: torch.Tensor) -> torch.Tensor:
    """The [tokens, hidden] tensor that ``attend`` fills, for ``qkv`` [tokens, 3 * hidden]."""
    return qkv.new_empty(qkv.shape[0], qkv.shape[1] // 3)


def attend(qkv: torch.Tensor, context: torch.Tensor, blocks: Sequence[Block], heads: int,
           native: BlocksAttention | None = None) -> None:
    """Write the attention of ``blocks`` into their rows of ``context`` [tokens, hidden]: one
    call of ``native`` for them all where it takes ``qkv`` (a CPU's bfloat16, or int8's float32
    rounded to it), else one fused
    call of torch's each, without a mask."""
    if native is not None and native.takes(qkv, heads):
        native(qkv, context, blocks, heads)
        return
    hidden = context.shape[1]
    for block in blocks:
        end = block.start + block.count * block.length
        # [count * length, 3, heads, head_dim] -> three [count, heads, length, head_dim]
        q, k, v = qkv[block.start:end].view(block.count, block.length, 3, heads, -1).permute(2, 0, 3, 1, 4)
        first, last = block.rows
        out = F.scaled_dot_product_attention(q[:, :, first:last], k, v)
        rows = context[block.start:end].view(block.count, block.length, hidden)[:, first:last]
        rows.copy_(out.transpose(1, 2).reshape(block.count, last - first, hidden))


def varlen(qkv: torch.Tensor, spans: Spans, heads: int, kernel: Kernel) -> torch.Tensor:
    """``qkv``: [tokens, 3 * hidden]; one kernel call over every text. Returns [tokens, hidden]."""
    if spans.cu_seqlens is None:
        raise ValueError("the varlen path needs Spans built with cu_seqlens")
    tokens, width = qkv.shape
    # Views, no copy: flash kernels need only the last dimension contiguous.
    q, k, v = qkv.view(tokens, 3, heads, -1).unbind(1)
    return kernel(q, k, v, spans.cu_seqlens, spans.max_length).reshape(tokens, width // 3)


def flash_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int) -> torch.Tensor:
    # The op that torch.nn.attention.varlen calls, called directly: it skips a custom-op
    # dispatch and a log call per layer. Only the positional arguments that torch 2.11
    # and 2.13 share (no dropout, not causal, no debug mask, the default 1/sqrt(d) scale).
    out: torch.Tensor = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, 0.0, False,
                                                                False)[0]
    return out


def public_varlen_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                         longest: int) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn  # torch 2.10 and later

    out = varlen_attn(q, k, v, cu, cu, longest, longest)
    return out if isinstance(out, torch.Tensor) else out[0]


def kernels() -> list[tuple[str, Kernel]]:
    """The varlen kernels the installed torch offers, best first."""
    found: list[tuple[str, Kernel]] = []
    if hasattr(torch.ops.aten, "_flash_attention_forward"):
        found.append(("aten._flash_attention_forward", flash_kernel))
    if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
        found.append(("torch.nn.attention.varlen.varlen_attn", public_varlen_kernel))
    return found


def kernel_error(kernel: Kernel, device: torch.device, dtype: torch.dtype) -> str:
    """Try ``kernel`` on three texts against the per-length path; "" if it agrees, else what went wrong."""
    lengths, heads = [5, 3, 3], 2
    qkv = torch.randn(sum(lengths), 3 * heads * 64, device=device, dtype=dtype)
    spans = Spans(lengths, torch.from_numpy(cu_seqlens(lengths)).to(device))
    try:
        got = varlen(qkv, spans, heads, kernel)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    difference = (got.float() - per_length(qkv, spans, heads).float()).abs().max().item()
    return "" if difference < 1e-2 else f"differs from per-length attention by {difference:.3g}"


def select(device: torch.device, dtype: torch.dtype, wanted: str = "auto") -> tuple[Choice, Kernel | None]:
    """The attention path for this device and dtype (``wanted``: "auto", or PER_LENGTH to keep that path)."""
    refusal = "asked for" if wanted == PER_LENGTH else wants_varlen(device.type, dtype)
    if refusal:
        return Choice(PER_LENGTH, "", refusal), None
    return choose(kernels(), lambda kernel: kernel_error(kernel, device, dtype))


def choose(offered: list[tuple[str, Kernel]], error_of: Callable[[Kernel], str]) -> tuple[Choice, Kernel | None]:
    """The first offered kernel that works (``error_of`` returns ""), else the per-length path, saying why."""
    failures = []
    for name, kernel in offered:
        error = error_of(kernel)
        if not error:
            return Choice(VARLEN, name, "flash kernel over cu_seqlens, one call per layer"), kernel
        failures.append(f"{name}: {error}")
    reason = "; ".join(failures) or f"torch {torch.__version__} has no varlen attention kernel"
    return Choice(PER_LENGTH, "", f"no usable varlen kernel ({reason})"), None
