"""Attention over packed inputs: one row of concatenated texts, no padding and no mask.

The encoder runs a batch as a single sequence of all its texts' tokens, so that
every matrix product works on real tokens only. Attention must not cross from
one text into another: this function, registered with transformers as
``PACKED``, runs scaled-dot-product attention on each text's own span. Without
a mask, PyTorch takes its fused (flash) kernel on both CPU and CUDA; a padding
mask would send it to the slow path that materialises every score. Texts of
equal length next to each other (the planner sorts by length) share one call.
"""

from __future__ import annotations

from itertools import groupby

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PACKED = "packed_sdpa"


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                **kwargs: object) -> tuple[torch.Tensor, None]:
    """``query``/``key``/``value``: [1, heads, tokens, head_dim]; ``kwargs["text_lengths"]``: the texts' lengths.

    Returns [1, tokens, heads, head_dim], the layout transformers' own SDPA returns.
    """
    _, heads, tokens, head_dim = query.shape
    out = query.new_empty(tokens, heads, head_dim)
    start = 0
    for length, run in groupby(kwargs["text_lengths"]):
        count = len(list(run))
        span = slice(start, start + count * length)
        q, k, v = (x[0, :, span].unflatten(1, (count, length)).transpose(0, 1) for x in (query, key, value))
        # [count, heads, length, head_dim] -> [count * length, heads, head_dim]
        out[span] = F.scaled_dot_product_attention(q, k, v, scale=scaling).transpose(1, 2).flatten(0, 1)
        start = span.stop
    return out[None], None


AttentionInterface.register(PACKED, packed_sdpa)
