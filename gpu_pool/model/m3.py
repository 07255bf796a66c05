"""BGE-M3: the XLM-RoBERTa encoder and its three heads, run on one device.

The arithmetic follows FlagEmbedding's ``BGEM3FlagModel`` exactly (CLS pooling,
``relu(sparse_linear(H))``, ``colbert_linear(H[:, 1:])`` over the real tokens,
then L2 norm), so that the vectors match it; see
tests/integration/test_vectors_match_flagembedding.py. A batch runs packed: its
texts' tokens are concatenated into one row (gpu_pool/model/xlmr.py). On CUDA the host
never waits for the device inside a pass: ids go over from pinned memory and the outputs
come back in one asynchronous copy (gpu_pool/model/transfer.py).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel

from gpu_pool.model import attention, cpu_linear
from gpu_pool.model.device import Device
from gpu_pool.model.flops import flops_per_token
from gpu_pool.model.graphs import EncoderGraphs
from gpu_pool.model.native import load as load_native
from gpu_pool.model.port import Outputs
from gpu_pool.model.transfer import HostCopy, PassTimer, release_memory, to_device
from gpu_pool.model.xlmr import PackedEncoder, Plan, State
from gpu_pool.wire import packing
from gpu_pool.wire.protocol import Kind, has_kind

# On a CPU, a pass with less work than this runs on one thread: waking the other
# threads for each of its many small operations costs more than they save, most of
# all when the web workers share the cores (tiny model, one short text per request:
# 2.1 ms per batch on one thread against 4.3 ms on two, under load).
PARALLEL_MIN_FLOPS = 50e6

log = logging.getLogger("gpu_pool.engine")


def use_threads(where: Device, threads: int, flops: float) -> None:
    """On a CPU, ``threads`` for a pass of ``flops``, or one below ``PARALLEL_MIN_FLOPS``."""
    if where.accelerator is None:
        wanted = threads if flops >= PARALLEL_MIN_FLOPS else 1
        if wanted != torch.get_num_threads():
            torch.set_num_threads(wanted)


class M3Model:
    def __init__(self, path: Path, device: torch.device | Device, dtype: torch.dtype, threads: int = 1,
                 attention_path: str = "auto") -> None:
        """``device``: a torch device, or the engine's (``device.resolve_device``); ``threads``: the most
        CPU threads a pass may use; ``attention_path``: "auto" (chosen by device and dtype), or
        ``attention.PER_LENGTH`` to keep the per-length path (the device check compares them)."""
        self.where = Device.of(device)  # with its accelerator, where there is one
        self.device, self.threads = self.where.tensors, threads
        device = self.device
        products = cpu_linear.products(self.where, dtype)
        self.products, self.prepare = products.name, products.prepare  # also the cross-encoder's
        self.device_name = self.where.name
        self.dtype_name = "int8" if dtype == cpu_linear.INT8 else str(dtype).removeprefix("torch.")
        # The type of the weights outside the products and of the activations: float32 around
        # int8's products, and around bfloat16's on a CPU.
        self.dtype = dtype = products.activations
        model = AutoModel.from_pretrained(str(path), dtype=dtype, add_pooling_layer=False)
        model.requires_grad_(False).to(device).eval()
        self.attention, kernel = attention.select(device, dtype, attention_path)
        native = None
        if self.where.accelerator is None and self.dtype_name in ("bfloat16", "int8"):  # int8's in float32
            native, which = load_native(rounding=self.dtype_name == "int8")
            self.attention = replace(self.attention, reason=f"{self.attention.reason}; {which}")
        self.encoder = PackedEncoder(model, kernel, products.prepare, products.prepare_down, products.table, native)
        self.layers = len(self.encoder.layers)
        hidden = model.config.hidden_size
        self.dim = hidden
        self.sparse_linear = _load_linear(path / "sparse_linear.pt", hidden, 1, device, dtype)
        colbert = _load_linear(path / "colbert_linear.pt", hidden, hidden, device, dtype)
        # A product as the feed-forward's second: floating point on every path, int8's too.
        self.colbert_linear = products.prepare_down(colbert.weight, colbert.bias)
        self.pad_id = int(model.config.pad_token_id)
        config = model.config
        self.flops_per_token = flops_per_token(config.num_hidden_layers, hidden, config.intermediate_size)
        self.graphs = self._record_graphs()

    def _record_graphs(self) -> EncoderGraphs | None:
        """The small passes' graphs, on an accelerator's varlen path (None: every pass eager).
        A graph that cannot be recorded costs speed, not the engine: it says why and goes on."""
        accelerator = self.where.accelerator
        if accelerator is None or self.encoder.kernel is None:
            return None
        try:
            with torch.inference_mode():  # as the passes run
                return EncoderGraphs(self.encoder, accelerator, self.pad_id)
        except Exception as exc:  # noqa: BLE001 - any capture failure leaves the eager path, which works
            log.warning("CUDA graphs not recorded, every pass runs eagerly: %s: %s", type(exc).__name__, exc)
            return None

    @torch.inference_mode()
    def start(self, ids: np.ndarray, lengths: np.ndarray, kinds: Kind, colbert_texts: np.ndarray,
              step_tokens: int | None = None, one_thread: bool = False) -> Pass:
        """A pass that runs a part of a layer per ``step``, over at most ``step_tokens`` rows
        (None: all); its outputs once every step is done. ``one_thread``: as ``port.Model.start``."""
        timer = PassTimer(self.where)
        # XLM-R numbers each text's positions from pad_id + 1.
        positions = packing.positions(lengths, first=self.pad_id + 1)
        # A pass that runs whole (step_tokens None) replays a graph where one fits it.
        graph = self.graphs.fitting(lengths) if self.graphs is not None and step_tokens is None else None
        if graph is not None:
            hidden = graph.run(self._tensor(graph.host_inputs(ids, positions, lengths)), len(ids))
            return Pass(self, timer, hidden, lengths=lengths, kinds=kinds, colbert_texts=colbert_texts,
                        replayed_steps_per_layer=graph.steps_per_layer)
        hidden = self.encoder.embed(self._tensor(ids), self._tensor(positions))
        return Pass(self, timer, hidden, lengths=lengths, kinds=kinds, colbert_texts=colbert_texts,
                    step_tokens=step_tokens, one_thread=one_thread)

    def release_memory(self) -> None:
        release_memory(self.where)

    @torch.inference_mode()
    def heads(self, hidden: torch.Tensor, lengths: np.ndarray, kinds: Kind, colbert_texts: np.ndarray) -> HostCopy:
        """The requested heads over the last layer's hidden states, queued on the device and on
        their way to the host."""
        dense = sparse = colbert = None
        # Normalized in float32, then rounded once to what the answer carries.
        vector_type = torch.float16 if has_kind(kinds, Kind.HALF) else torch.float32
        if has_kind(kinds, Kind.DENSE):
            dense = F.normalize(hidden[self._tensor(packing.token_starts(lengths))].float(), dim=-1).to(vector_type)
        if has_kind(kinds, Kind.SPARSE):
            # Float32 always (float16 stays float16 on its way to the host): the weights feed sums
            # (a score job's lexical score) that float16 would round.
            sparse = torch.relu(self.sparse_linear(hidden).float()).squeeze(-1)
        if has_kind(kinds, Kind.COLBERT) and len(colbert_texts):
            rows = self._tensor(packing.colbert_sources(lengths, colbert_texts))
            colbert = F.normalize(self.colbert_linear(hidden[rows]).float(), dim=-1).to(vector_type)
        return HostCopy([dense, sparse, colbert], self.where)

    def use_threads(self, tokens: int) -> None:
        """CPU threads for a pass of ``tokens`` tokens."""
        use_threads(self.where, self.threads, tokens * self.flops_per_token)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.where)


class Encoding(Protocol):
    """What a ``Pass`` runs: an encoder and the heads over its output (``M3Model``, and the
    cross-encoder of gpu_pool/model/reranker.py)."""

    encoder: PackedEncoder
    layers: int

    def use_threads(self, tokens: int) -> None: ...

    def heads(self, hidden: torch.Tensor, lengths: np.ndarray, kinds: Kind, colbert_texts: np.ndarray) -> HostCopy:
        ...


class Pass:
    """One forward pass, a part of a layer per ``step`` (``PackedEncoder.run_step``): between two
    steps the engine may run another pass whole, and this one goes on from the state it keeps."""

    def __init__(self, model: Encoding, timer: PassTimer, hidden: torch.Tensor, *, lengths: np.ndarray, kinds: Kind,
                 colbert_texts: np.ndarray, step_tokens: int | None = None, replayed_steps_per_layer: int = 0,
                 one_thread: bool = False) -> None:
        """``replayed_steps_per_layer``: ``hidden`` is the last layer's already (a graph's replay,
        gpu_pool/model/graphs.py), which ran as so many steps a layer; 0: the embeddings.
        ``one_thread``: on a CPU, its steps run on one thread whatever its size."""
        self.model, self.timer, self.state, self.tokens = model, timer, State(hidden=hidden), len(hidden)
        self._thread_tokens = 0 if one_thread else self.tokens  # what sizes its threads: 0 takes one
        self.lengths, self.kinds, self.colbert_texts = lengths, kinds, colbert_texts
        self._plan: Plan | None = None
        if replayed_steps_per_layer:
            self.steps_per_layer, self.step_tokens = replayed_steps_per_layer, self.tokens
        else:
            self._plan = plan = model.encoder.plan(lengths.tolist(), step_tokens)  # once per pass
            self.steps_per_layer, self.step_tokens = len(plan.steps), plan.step_tokens
        self.steps = model.layers * self.steps_per_layer
        self.done = self.steps if replayed_steps_per_layer else 0  # steps run

    @torch.inference_mode()
    def step(self) -> bool:
        """Run the next step; True once the last one has run."""
        self.model.use_threads(self._thread_tokens)  # another pass, of another size, may have run since
        self._next()
        return self.done == self.steps

    @torch.inference_mode()
    def finish(self) -> None:
        """Run every step left, in a row: a pass that no other runs between (an interactive one)
        pays the per-step bookkeeping (inference mode, threads) once, not once a step."""
        self.model.use_threads(self._thread_tokens)
        for _ in range(self.steps - self.done):
            self._next()

    def _next(self) -> None:
        assert self._plan is not None, "a replayed pass has no steps left"
        layer, step = divmod(self.done, self.steps_per_layer)
        self.state = self.model.encoder.run_step(layer, step, self.state, self._plan)
        self.done += 1

    def keep_ahead(self, steps: int) -> None:
        self.timer.keep_ahead(steps)

    def sync(self) -> None:
        self.timer.sync()

    def outputs_async(self) -> PendingOutputs:
        """The outputs on their way to the host: a caller that starts the next pass before it
        ``wait``s overlaps the copy with that pass's kernels."""
        hidden = self.state.hidden
        if hidden is None or self.done != self.steps:
            raise RuntimeError(f"outputs asked for after {self.done} of the pass's {self.steps} steps")
        copy = self.model.heads(hidden, self.lengths, self.kinds, self.colbert_texts)
        self.timer.stop()
        return PendingOutputs(copy, self.timer)


class PendingOutputs:
    """A pass's outputs being copied to the host (at once on the CPU), and its time."""

    def __init__(self, copy: HostCopy, timer: PassTimer) -> None:
        self._copy, self._timer = copy, timer

    def wait(self) -> Outputs:
        # dense, sparse, colbert, and a cross-encoder's logits where its heads made them
        return Outputs(*self._copy.wait())

    def seconds(self) -> float:
        """The pass's time on the device, from its start to its heads (after ``wait``)."""
        return self._timer.seconds()


def _load_linear(path: Path, n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Linear:
    layer = torch.nn.Linear(n_in, n_out)
    layer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return layer.to(device=device, dtype=dtype).eval()

