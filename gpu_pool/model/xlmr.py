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

A pass runs a layer in steps, each a frozen dataclass with one ``run`` (``QKVProjection``,
``AttentionPart`` or ``VarlenAttention``, ``AttentionOutput``, ``FeedForwardUp``,
``FeedForwardDown``), planned once per pass (``PackedEncoder.plan``) and run one at a
time (``PackedEncoder.run_step``) over a ``State`` that carries the pass's tensors
from one step to the next.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F

from gpu_pool.model import attention
from gpu_pool.model.attention import Block, Kernel, Spans
from gpu_pool.model.cpu_linear import Dense, Prepare, Product
from gpu_pool.model.native import AddNorm, BlocksAttention
from gpu_pool.model.transfer import to_device

if TYPE_CHECKING:
    # For the checker only: these classes type the submodules read below, which
    # nn.Module's ``__getattr__`` would type as ``Tensor | Module``.
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaLayer, XLMRobertaModel

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
# The plans kept (``PackedEncoder.plan``): of passes of up to this many texts, the most recent.
# Queries come in a few dozen lengths, and working a plan out took 10 µs of the tiny model's
# 340 µs pass of one query (in process).
KEPT_PLAN_TEXTS = 8
KEPT_PLANS = 1024


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One layer's products (gpu_pool/model/cpu_linear.py), norms (weight, bias), and what its
    arithmetic needs of the config."""

    qkv: Product  # [hidden] -> [3 * hidden]
    attention_out: Product
    attention_norm: tuple[torch.Tensor, torch.Tensor]
    intermediate: Product
    output: Product
    output_norm: tuple[torch.Tensor, torch.Tensor]
    heads: int
    eps: float
    add_norm: AddNorm | None = None  # the native kernel of both, where it runs

    def norm(self, x: torch.Tensor, residual: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """LayerNorm(x + residual): a product's output and the layer's input to it."""
        if self.add_norm is not None and self.add_norm.takes(x, residual, weights[0]):
            return self.add_norm(x, residual, *weights, self.eps)
        return F.layer_norm(x + residual, x.shape[-1:], *weights, eps=self.eps)


@dataclass(frozen=True, kw_only=True)
class State:
    """A pass's tensors between two steps, each [tokens, width], filled chunk by chunk; None
    while the layer has not made it yet or no longer needs it."""

    hidden: torch.Tensor | None = None  # the layer's input; after the last layer, the encoder's output
    qkv: torch.Tensor | None = None  # attention's queries, keys and values
    context: torch.Tensor | None = None  # attention's output, before its projection
    attended: torch.Tensor | None = None  # the hidden states after attention: the feed-forward's input
    inner: torch.Tensor | None = None  # the feed-forward's middle, of one chunk's rows only
    out: torch.Tensor | None = None  # the layer's output


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """Rows ``first`` to ``end`` of a pass's ``tokens``: the rows one step's products take."""

    first: int
    end: int
    tokens: int

    @property
    def size(self) -> int:
        return self.end - self.first

    @property
    def last(self) -> bool:
        return self.end == self.tokens

    @property
    def whole(self) -> bool:
        return self.first == 0 and self.end == self.tokens

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        """These rows of a [tokens, width] ``tensor``; the only chunk: ``tensor`` itself (a view
        costs a few microseconds, and a short pass has a hundred steps)."""
        return tensor if self.whole else tensor[self.first:self.end]

    def fill(self, buffer: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
        """``value`` as these rows of a [tokens, width] tensor, made by the first chunk; the
        only chunk: ``value`` itself."""
        if self.whole:
            return value
        if buffer is None:
            buffer = value.new_empty(self.tokens, value.shape[1])
        buffer[self.first:self.end] = value
        return buffer


class Step(Protocol):
    def run(self, layer: Layer, state: State) -> State:
        """This step of ``layer`` over ``state``; the state the next step starts from: what the
        layer's later steps still need."""
        ...


@dataclass(frozen=True, kw_only=True)
class QKVProjection:
    """The queries, keys and values of one chunk's rows, in one product."""

    chunk: Chunk

    def run(self, layer: Layer, state: State) -> State:
        hidden = state.hidden
        assert hidden is not None, "the projection reads the layer's input"
        qkv = layer.qkv(self.chunk.of(hidden))
        return State(hidden=hidden, qkv=self.chunk.fill(state.qkv, qkv))


@dataclass(frozen=True, kw_only=True)
class AttentionOutput:
    """Attention's output projection, residual and norm over one chunk's rows."""

    chunk: Chunk

    def run(self, layer: Layer, state: State) -> State:
        context = state.context
        assert context is not None, "the output projection follows attention"
        hidden = state.hidden
        assert hidden is not None, "the output projection adds the layer's input"
        chunk = self.chunk
        value = layer.norm(layer.attention_out(chunk.of(context)), chunk.of(hidden), layer.attention_norm)
        attended = chunk.fill(state.attended, value)
        if chunk.last:  # the feed-forward needs nothing else of the layer
            return State(attended=attended)
        return State(hidden=hidden, context=context, attended=attended)  # every attention part has run


@dataclass(frozen=True, kw_only=True)
class AttentionPart:
    """Attention of some texts' query rows (one of ``Spans.parts``: the per-length path); ``then``:
    the output projection run in the same step (``layer_steps`` says when)."""

    blocks: tuple[Block, ...]
    native: BlocksAttention | None = None
    then: AttentionOutput | None = None

    def run(self, layer: Layer, state: State) -> State:
        qkv = state.qkv
        assert qkv is not None, "attention follows the projection"
        context = attention.new_context(qkv) if state.context is None else state.context
        attention.attend(qkv, context, self.blocks, layer.heads, self.native)
        state = State(hidden=state.hidden, qkv=qkv, context=context)
        return state if self.then is None else self.then.run(layer, state)


@dataclass(frozen=True, kw_only=True)
class VarlenAttention:
    """Attention of every text in one kernel call over ``cu_seqlens`` (the varlen path)."""

    spans: Spans
    kernel: Kernel
    then: AttentionOutput | None = None

    def run(self, layer: Layer, state: State) -> State:
        qkv = state.qkv
        assert qkv is not None, "attention follows the projection"
        context = attention.varlen(qkv, self.spans, layer.heads, self.kernel)
        state = State(hidden=state.hidden, qkv=qkv, context=context)
        return state if self.then is None else self.then.run(layer, state)


@dataclass(frozen=True, kw_only=True)
class FeedForwardUp:
    """The feed-forward's first half over one chunk's rows: its middle, four times as wide."""

    chunk: Chunk

    def run(self, layer: Layer, state: State) -> State:
        attended = state.attended
        assert attended is not None, "the feed-forward follows attention"
        inner = layer.intermediate.gelu(self.chunk.of(attended))
        return State(attended=attended, inner=inner, out=state.out)


@dataclass(frozen=True, kw_only=True)
class FeedForwardDown:
    """The feed-forward's second half, residual and norm over one chunk's rows: the layer's output."""

    chunk: Chunk

    def run(self, layer: Layer, state: State) -> State:
        inner = state.inner
        assert inner is not None, "the feed-forward's second half follows its first"
        attended = state.attended
        assert attended is not None, "the feed-forward adds attention's output"
        value = layer.norm(layer.output(inner), self.chunk.of(attended), layer.output_norm)
        out = self.chunk.fill(state.out, value)
        if self.chunk.last:  # the next layer's input
            return State(hidden=out)
        return State(attended=attended, out=out)


Attention = AttentionPart | VarlenAttention


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A pass's steps, worked out once per pass: attention's ``spans``, the row ``chunks`` of
    the products, and one layer's ``steps`` in order."""

    spans: Spans
    chunks: tuple[Chunk, ...]
    steps: tuple[Step, ...]

    @property
    def step_tokens(self) -> int:
        """The most rows one step takes."""
        return widest(self.chunks)


def row_chunks(tokens: int, step_tokens: int | None) -> tuple[tuple[int, int], ...]:
    """(first, end) rows of each chunk: equal chunks of at most ``step_tokens`` (None: one)."""
    count = 1 if not step_tokens or tokens <= step_tokens else -(-tokens // step_tokens)
    bounds = [tokens * i // count for i in range(count + 1)]
    return tuple(itertools.pairwise(bounds))


def widest(chunks: Sequence[Chunk]) -> int:
    return max(chunk.size for chunk in chunks)


def layer_steps(chunks: Sequence[Chunk], parts: Sequence[Attention]) -> tuple[Step, ...]:
    """One layer's steps: the projection, attention's parts, the output projection, then the
    feed-forward chunk by chunk. The output projection of a chunk needs its rows from every
    part; in one chunk, the last part runs it (one step fewer), in several each chunk has its own."""
    qkv = [QKVProjection(chunk=chunk) for chunk in chunks]
    outputs = [AttentionOutput(chunk=chunk) for chunk in chunks]
    feed_forward = [step for chunk in chunks for step in (FeedForwardUp(chunk=chunk), FeedForwardDown(chunk=chunk))]
    if len(chunks) == 1:
        *first, last = parts
        return (*qkv, *first, replace(last, then=outputs[0]), *feed_forward)
    return (*qkv, *parts, *outputs, *feed_forward)


class PackedEncoder:
    def __init__(self, model: XLMRobertaModel, kernel: Kernel | None = None, prepare: Prepare = Dense,
                 prepare_down: Prepare | None = None, table: torch.dtype | None = None,
                 native: BlocksAttention | None = None) -> None:
        """``kernel``: the varlen attention kernel (``attention.select``); None: attention per length;
        ``prepare``: how each product's weight is prepared (``cpu_linear.products``); ``prepare_down``:
        the feed-forward's second product's (None: as the others); ``table``: the word embeddings'
        type (None: the model's; a smaller one widens to it in the embeddings' sum); ``native``: the
        compiled CPU attention (``gpu_pool.model.native``: bfloat16, and int8's float32 rounded for
        it), on the per-length path; its library's layer norms too."""
        config = model.config
        if config.hidden_act != "gelu" or getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported encoder: hidden_act={config.hidden_act!r}, "
                             f"position_embedding_type={config.position_embedding_type!r}")
        self.eps = config.layer_norm_eps
        emb = model.embeddings
        word = emb.word_embeddings.weight
        self.word = word.to(table or word.dtype, copy=True)
        self.position = _own(emb.position_embeddings.weight)
        self.token_type = _own(emb.token_type_embeddings.weight[0])  # bge-m3 has one token type
        self.embedding_norm = _norm(emb.LayerNorm)
        # nn.ModuleList is not generic: its items are typed Module, though each is an XLMRobertaLayer.
        down = prepare if prepare_down is None else prepare_down
        add_norm = None if native is None else AddNorm(native.library)
        self.layers = [_layer(cast("XLMRobertaLayer", layer), config.num_attention_heads, self.eps, prepare, down,
                              add_norm) for layer in model.encoder.layer]
        self.kernel = kernel
        self.native = native
        # Plans hold no tensor on the per-length path: one serves every pass of the same lengths.
        self._kept_plan = functools.lru_cache(maxsize=KEPT_PLANS)(self._plan)

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The input of the first layer: [tokens, hidden]."""
        x = self.word[ids] + self.position[positions] + self.token_type
        return F.layer_norm(x, x.shape[-1:], *self.embedding_norm, eps=self.eps)

    def plan(self, lengths: Sequence[int], step_tokens: int | None = None,
             cu_seqlens: torch.Tensor | None = None) -> Plan:
        """What a pass's steps need of its lengths, once per pass; ``step_tokens``: the most
        rows a step's products take (None: all); ``cu_seqlens``: the varlen path's, already on
        the device (a graph's: gpu_pool/model/graphs.py), instead of the lengths' own. A few
        queries' plan on the per-length path is kept for their lengths' next pass."""
        part_scores = SCORES_PER_TOKEN  # a key of the kept plans: a test sets it lower
        if self.kernel is None and len(lengths) <= KEPT_PLAN_TEXTS:
            return self._kept_plan(tuple(lengths), step_tokens, part_scores)
        return self._plan(lengths, step_tokens, part_scores, cu_seqlens)

    def _plan(self, lengths: Sequence[int], step_tokens: int | None, part_scores: int,
              cu_seqlens: torch.Tensor | None = None) -> Plan:
        tokens = sum(lengths)
        chunks = tuple(Chunk(first=first, end=end, tokens=tokens) for first, end in row_chunks(tokens, step_tokens))
        parts: tuple[Attention, ...]
        if self.kernel is None:
            spans = Spans(lengths, part_scores=part_scores * widest(chunks))
            parts = tuple(AttentionPart(blocks=tuple(blocks), native=self.native) for blocks in spans.parts)
        else:
            if cu_seqlens is None:
                cu_seqlens = to_device(attention.cu_seqlens(lengths), self.word.device, np.int32)
            spans = Spans(lengths, cu_seqlens)
            parts = (VarlenAttention(spans=spans, kernel=self.kernel),)
        return Plan(spans=spans, chunks=chunks, steps=layer_steps(chunks, parts))

    def run_step(self, layer: int, step: int, state: State, plan: Plan) -> State:
        """Step ``step`` (of ``len(plan.steps)``) of layer ``layer``: a pass can stop after any
        and go on later from the state it returns."""
        return plan.steps[step].run(self.layers[layer], state)


def _layer(layer: XLMRobertaLayer, heads: int, eps: float, prepare: Prepare, prepare_down: Prepare,
           add_norm: AddNorm | None) -> Layer:
    attention = layer.attention.self
    projections = (attention.query, attention.key, attention.value)
    return Layer(
        qkv=prepare(torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections])),
        attention_out=prepare(*_params(layer.attention.output.dense)),
        attention_norm=_norm(layer.attention.output.LayerNorm),
        intermediate=prepare(*_params(layer.intermediate.dense)),
        output=prepare_down(*_params(layer.output.dense)),
        output_norm=_norm(layer.output.LayerNorm),
        heads=heads,
        eps=eps,
        add_norm=add_norm,
    )


def _params(module: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return module.weight, module.bias


def _norm(module: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    return _own(module.weight), _own(module.bias)


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in memory of its own. transformers maps the weights file, and a tensor kept as a
    view of it keeps the whole file mapped once the products have made their own copies of the
    rest (the full model's float32 file: 2.3 GB of the engine's memory)."""
    return tensor.clone()
