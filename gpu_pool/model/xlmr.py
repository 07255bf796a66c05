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


# A layer runs in steps of at most about a quarter of its matrix products each (12·d² a
# token): the query, key and value projection (3·d²), attention with its output projection
# (d²), then each half of the feed-forward (4·d² each). Between two steps the engine may run
# a waiting query's pass: the longest step is its longest wait. Attention also costs each
# text's length squared; on the per-length path it runs in parts of at most this many scores
# (query rows × keys) per token of the pass, so that a part takes about as long as a
# feed-forward half (measured on the CPU in bfloat16: a 1,760-token text's attention took
# 72 ms, 3.1 M scores, against 22 ms for a feed-forward half; 522 tokens: 7.7 against 6 ms).
SCORES_PER_TOKEN = 512


@dataclass(frozen=True)
class State:
    """A pass's hidden states between two steps; ``inner``: the feed-forward's middle;
    ``qkv`` and ``context``: attention's inputs and its rows done so far, between its parts."""

    hidden: torch.Tensor
    inner: torch.Tensor | None = None
    qkv: torch.Tensor | None = None
    context: torch.Tensor | None = None


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
        spans = lengths if isinstance(lengths, Spans) else self.spans(lengths)
        state = State(hidden)
        for stage in range(self.stages(spans)):
            state = self.stage(index, stage, state, spans)
        return state.hidden

    def stages(self, spans: Spans) -> int:
        """Steps per layer of a pass: the query, key and value projection, attention's parts
        (the last with the output projection), then the feed-forward's two halves."""
        return len(spans.parts) + 3

    def stage(self, index: int, stage: int, state: State, spans: Spans) -> State:
        """Step ``stage`` of layer ``index`` (``stages(spans)`` of them): a pass can stop after
        any and go on later from the state it returns."""
        layer, parts = self.layers[index], len(spans.parts)
        if stage == 0:
            return State(state.hidden, qkv=F.linear(state.hidden, *layer.qkv))
        if stage <= parts:
            return self._attention_part(layer, stage - 1, state, spans)
        if stage == parts + 1:
            return State(state.hidden, F.gelu(F.linear(state.hidden, *layer.intermediate)))
        assert state.inner is not None, "the feed-forward's second half follows its first"
        return State(self._norm(F.linear(state.inner, *layer.output) + state.hidden, layer.output_norm))

    def _attention_part(self, layer: Layer, part: int, state: State, spans: Spans) -> State:
        qkv = state.qkv
        assert qkv is not None, "attention follows the projection"
        if self.kernel is not None:
            context = attention.varlen(qkv, spans, self.heads, self.kernel)
        else:
            context = qkv.new_empty(qkv.shape[0], qkv.shape[1] // 3) if state.context is None else state.context
            attention.attend(qkv, context, spans.parts[part], self.heads)
        if part + 1 < len(spans.parts):
            return State(state.hidden, qkv=qkv, context=context)
        return State(self._norm(F.linear(context, *layer.attention_out) + state.hidden, layer.attention_norm))

    def _norm(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], *weights, eps=self.eps)

    def spans(self, lengths: Sequence[int]) -> Spans:
        """What attention needs of a pass's lengths, once per pass: ``layer`` and ``stage`` take it."""
        if self.kernel is None:
            return Spans(lengths, part_scores=SCORES_PER_TOKEN * sum(lengths))
        return Spans(lengths, to_device(attention.cu_seqlens(lengths), self.word.device, np.int32))


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
