"""The XLM-RoBERTa encoder of BGE-M3 as a few tensor operations over packed texts.

transformers loads the weights; this module runs them. A batch is one row of
all its texts' tokens, so every matrix product works on real tokens only and no
compute goes to padding; attention runs on each text's own span with PyTorch's
fused scaled-dot-product kernel (no mask, so it takes the flash path on CPU and
CUDA alike; a padding mask would send it to the slow path that materialises
every score). The arithmetic is transformers' ``XLMRobertaModel`` in eval mode
(post-LayerNorm layers, exact GELU), with the query, key and value projections
fused into one product. Going around the ``nn.Module`` machinery also matters:
for short texts its per-call overhead took longer than the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    # For the checker only: these classes type the submodules read below, which
    # nn.Module's ``__getattr__`` would type as ``Tensor | Module``.
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaLayer, XLMRobertaModel


@dataclass(frozen=True)
class Layer:
    qkv: tuple[torch.Tensor, torch.Tensor]  # weight [3 * hidden, hidden], bias
    attention_out: tuple[torch.Tensor, torch.Tensor]
    attention_norm: tuple[torch.Tensor, torch.Tensor]
    intermediate: tuple[torch.Tensor, torch.Tensor]
    output: tuple[torch.Tensor, torch.Tensor]
    output_norm: tuple[torch.Tensor, torch.Tensor]


class PackedEncoder:
    def __init__(self, model: XLMRobertaModel) -> None:
        config = model.config
        if config.hidden_act != "gelu" or getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported encoder: hidden_act={config.hidden_act!r}, "
                             f"position_embedding_type={config.position_embedding_type!r}")
        self.heads, self.eps = config.num_attention_heads, config.layer_norm_eps
        emb = model.embeddings
        self.word, self.position = emb.word_embeddings.weight, emb.position_embeddings.weight
        self.token_type = emb.token_type_embeddings.weight[0]  # bge-m3 has one token type
        self.embedding_norm = (emb.LayerNorm.weight, emb.LayerNorm.bias)
        # nn.ModuleList is not generic: its items are typed Module, though each is an XLMRobertaLayer.
        self.layers = [_layer(cast("XLMRobertaLayer", layer)) for layer in model.encoder.layer]

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """``ids``, ``positions``: [tokens], the texts one after another; returns [tokens, hidden]."""
        hidden = self.embed(ids, positions)
        for index in range(len(self.layers)):
            hidden = self.layer(index, hidden, lengths)
        return hidden

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The input of the first layer: [tokens, hidden]."""
        return self._norm(self.word[ids] + self.position[positions] + self.token_type, self.embedding_norm)

    def layer(self, index: int, hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Layer ``index`` over the packed hidden states; one at a time, so that a pass can
        stop between layers and go on later from the states it returns."""
        layer = self.layers[index]
        context = self._attention(F.linear(hidden, *layer.qkv), lengths)
        hidden = self._norm(F.linear(context, *layer.attention_out) + hidden, layer.attention_norm)
        inner = F.gelu(F.linear(hidden, *layer.intermediate))
        return self._norm(F.linear(inner, *layer.output) + hidden, layer.output_norm)

    def _norm(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], *weights, eps=self.eps)

    def _attention(self, qkv: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """``qkv``: [tokens, 3 * hidden]; each text attends to itself only. Texts of equal
        length next to each other (the planner sorts by length) share one call."""
        tokens, width = qkv.shape
        hidden = width // 3
        context = qkv.new_empty(tokens, hidden)
        start = 0
        for length, run in groupby(lengths):
            count = len(list(run))
            end = start + count * length
            # [count * length, 3, heads, head_dim] -> three [count, heads, length, head_dim]
            q, k, v = qkv[start:end].view(count, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v)
            context[start:end] = out.transpose(1, 2).reshape(count * length, hidden)
            start = end
        return context


def _layer(layer: XLMRobertaLayer) -> Layer:
    attention = layer.attention.self
    projections = (attention.query, attention.key, attention.value)
    return Layer(
        qkv=(torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections])),
        attention_out=_params(layer.attention.output.dense),
        attention_norm=_params(layer.attention.output.LayerNorm),
        intermediate=_params(layer.intermediate.dense),
        output=_params(layer.output.dense),
        output_norm=_params(layer.output.LayerNorm),
    )


def _params(module: torch.nn.Linear | torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    return module.weight, module.bias
