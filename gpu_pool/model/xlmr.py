"""The XLM-RoBERTa encoder of BGE-M3 as a few tensor operations over packed texts.

transformers loads the weights; this module runs them. A batch is one row of
all its texts' tokens, so every matrix product works on real tokens only and no
compute goes to padding; attention runs on each text's own span
(gpu_pool/model/attention.py: PyTorch's fused kernel per run of equal lengths, or on
CUDA in half precision one flash-attention call per layer over ``cu_seqlens``; never
a padding mask, which would send it to the slow path that materialises every score).
The arithmetic is transformers' ``XLMRobertaModel`` in eval mode (post-LayerNorm
layers, exact GELU), with the query, key and value projections fused into one product.
Going around the ``nn.Module`` machinery also matters: for short texts its per-call
overhead took longer than the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F

from gpu_pool.model import attention
from gpu_pool.model.attention import Kernel, Spans
from gpu_pool.model.transfer import to_device

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


# A layer runs in three steps of about a third of its matrix products each (8·d² a token):
# attention (query, key, value and output), then each half of the feed-forward. Between two
# steps the engine may run a waiting query's pass: a third of a layer is its longest wait.
STAGES = 3


@dataclass(frozen=True)
class State:
    """A pass's hidden states between two steps; ``inner``: the feed-forward's middle."""

    hidden: torch.Tensor
    inner: torch.Tensor | None = None


class PackedEncoder:
    def __init__(self, model: XLMRobertaModel, kernel: Kernel | None = None) -> None:
        """``kernel``: the varlen attention kernel (``attention.select``); None: attention per length."""
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
        self.kernel = kernel

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
        """Layer ``index`` over the packed hidden states."""
        state = State(hidden)
        for stage in range(STAGES):
            state = self.stage(index, stage, state, lengths)
        return state.hidden

    def stage(self, index: int, stage: int, state: State, lengths: list[int]) -> State:
        """Step ``stage`` of layer ``index``: a pass can stop after any and go on later from
        the state it returns."""
        layer = self.layers[index]
        if stage == 0:
            context = self._attention(F.linear(state.hidden, *layer.qkv), lengths)
            return State(self._norm(F.linear(context, *layer.attention_out) + state.hidden, layer.attention_norm))
        if stage == 1:
            return State(state.hidden, F.gelu(F.linear(state.hidden, *layer.intermediate)))
        assert state.inner is not None, "the feed-forward's second half follows its first"
        return State(self._norm(F.linear(state.inner, *layer.output) + state.hidden, layer.output_norm))

    def _norm(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], *weights, eps=self.eps)

    def spans(self, lengths: Sequence[int]) -> Spans:
        """What attention needs of a pass's lengths, once per pass: ``layer`` takes it as its ``lengths``."""
        if self.kernel is None:
            return Spans(lengths)
        return Spans(lengths, to_device(attention.cu_seqlens(lengths), self.word.device, np.int32))

    def _attention(self, qkv: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """``qkv``: [tokens, 3 * hidden]; each text attends to itself only."""
        spans = lengths if isinstance(lengths, Spans) else self.spans(lengths)
        if self.kernel is None:
            return attention.per_length(qkv, spans, self.heads)
        return attention.varlen(qkv, spans, self.heads, self.kernel)


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
