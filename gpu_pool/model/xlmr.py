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

import itertools
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
# (query rows × keys) per token of a step, so that a part takes about as long as a
# feed-forward half (measured on the CPU in bfloat16: a 1,760-token text's attention took
# 72 ms, 3.1 M scores, against 22 ms for a feed-forward half; 522 tokens: 7.7 against 6 ms).
# A pass may also bound its steps' tokens (``step_tokens``): the products, which work row by
# row, then run in chunks of that many rows, so that one long text's steps stay as short as
# a small pass's.
SCORES_PER_TOKEN = 512

QKV, ATTEND, OUT, UP, DOWN = "qkv", "attend", "out", "up", "down"


@dataclass(frozen=True)
class State:
    """A pass's hidden states between two steps: ``hidden``, the layer's input, and what the
    layer's steps have made of it so far (attention's inputs ``qkv``, its output ``context``,
    the hidden states after attention ``attended``, the feed-forward's middle ``inner`` for
    one chunk, and the layer's output ``out``), each filled chunk by chunk."""

    hidden: torch.Tensor
    inner: torch.Tensor | None = None
    qkv: torch.Tensor | None = None
    context: torch.Tensor | None = None
    attended: torch.Tensor | None = None
    out: torch.Tensor | None = None


@dataclass(frozen=True)
class Plan:
    """A pass's steps, worked out once per pass: attention's ``spans``, the row ``chunks`` of
    the products, and one layer's ``steps`` in order, each (what, which chunk or part)."""

    spans: Spans
    chunks: tuple[tuple[int, int], ...]
    steps: tuple[tuple[str, int], ...]

    @property
    def step_tokens(self) -> int:
        """The most rows one step takes."""
        return widest(self.chunks)


def row_chunks(tokens: int, step_tokens: int | None) -> tuple[tuple[int, int], ...]:
    """(first, end) rows of each chunk: equal chunks of at most ``step_tokens`` (None: one)."""
    count = 1 if not step_tokens or tokens <= step_tokens else -(-tokens // step_tokens)
    bounds = [tokens * i // count for i in range(count + 1)]
    return tuple(itertools.pairwise(bounds))


def widest(chunks: tuple[tuple[int, int], ...]) -> int:
    return max(end - first for first, end in chunks)


def layer_steps(chunks: int, parts: int) -> tuple[tuple[str, int], ...]:
    """One layer's steps. In one chunk, the last attention part also runs the output
    projection (one step fewer); in several, each chunk has its own."""
    attend = [(ATTEND, part) for part in range(parts)]
    if chunks == 1:
        return ((QKV, 0), *attend, (UP, 0), (DOWN, 0))
    feed_forward = [step for chunk in range(chunks) for step in ((UP, chunk), (DOWN, chunk))]
    return (*[(QKV, c) for c in range(chunks)], *attend, *[(OUT, c) for c in range(chunks)], *feed_forward)


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

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The input of the first layer: [tokens, hidden]."""
        return self._norm(self.word[ids] + self.position[positions] + self.token_type, self.embedding_norm)

    def plan(self, lengths: Sequence[int], step_tokens: int | None = None) -> Plan:
        """What a pass's steps need of its lengths, once per pass; ``step_tokens``: the most
        rows a step's products take (None: all)."""
        chunks = row_chunks(sum(lengths), step_tokens)
        if self.kernel is None:
            spans = Spans(lengths, part_scores=SCORES_PER_TOKEN * widest(chunks))
        else:
            spans = Spans(lengths, to_device(attention.cu_seqlens(lengths), self.word.device, np.int32))
        return Plan(spans, chunks, layer_steps(len(chunks), len(spans.parts)))

    def stage(self, index: int, stage: int, state: State, plan: Plan) -> State:
        """Step ``stage`` of layer ``index`` (``len(plan.steps)`` of them): a pass can stop after
        any and go on later from the state it returns."""
        layer, (what, which) = self.layers[index], plan.steps[stage]
        if what == ATTEND:
            return self._attention_part(layer, which, state, plan)
        rows, whole = slice(*plan.chunks[which]), len(plan.chunks) == 1
        last = which == len(plan.chunks) - 1
        hidden = state.hidden
        if what == QKV:
            qkv = _fill(state.qkv, hidden, rows, F.linear(hidden[rows], *layer.qkv), whole)
            return State(hidden, qkv=qkv)
        if what == OUT:
            assert state.context is not None, "the output projection follows attention"
            value = self._attention_out(layer, state.context[rows], hidden[rows])
            attended = _fill(state.attended, hidden, rows, value, whole)
            return State(attended) if last else State(hidden, context=state.context, attended=attended)
        if what == UP:
            return State(hidden, F.gelu(F.linear(hidden[rows], *layer.intermediate)), out=state.out)
        assert state.inner is not None, "the feed-forward's second half follows its first"
        out = _fill(state.out, hidden, rows,
                    self._norm(F.linear(state.inner, *layer.output) + hidden[rows], layer.output_norm), whole)
        return State(out) if last else State(hidden, out=out)

    def _attention_part(self, layer: Layer, part: int, state: State, plan: Plan) -> State:
        qkv, spans = state.qkv, plan.spans
        assert qkv is not None, "attention follows the projection"
        if self.kernel is not None:
            context = attention.varlen(qkv, spans, self.heads, self.kernel)
        else:
            context = attention.new_context(qkv) if state.context is None else state.context
            attention.attend(qkv, context, spans.parts[part], self.heads)
        if part + 1 < len(spans.parts) or len(plan.chunks) > 1:
            return State(state.hidden, qkv=qkv, context=context)
        return State(self._attention_out(layer, context, state.hidden))

    def _attention_out(self, layer: Layer, context: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self._norm(F.linear(context, *layer.attention_out) + hidden, layer.attention_norm)

    def _norm(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], *weights, eps=self.eps)


def _fill(buffer: torch.Tensor | None, like: torch.Tensor, rows: slice, value: torch.Tensor,
          whole: bool) -> torch.Tensor:
    """``value`` as the rows ``rows`` of a [tokens, width] tensor made on the first chunk;
    in one chunk, ``value`` itself."""
    if whole:
        return value
    if buffer is None:
        buffer = like.new_empty(like.shape[0], value.shape[1])
    buffer[rows] = value
    return buffer


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
