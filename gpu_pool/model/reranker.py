"""The bge-reranker-v2-m3 cross-encoder beside bge-m3, on the same device and in the same dtype.

The cross-encoder is transformers' ``XLMRobertaForSequenceClassification`` with one label:
the XLM-RoBERTa encoder (its ``roberta``), then ``XLMRobertaClassificationHead`` (dense → tanh
→ out_proj, dropout off in eval) over each pair's ``<s>`` row. Its encoder runs as bge-m3's
does (``xlmr.PackedEncoder`` over packed pairs, a part of a layer per step, ``m3.Pass``), so
lanes, steps and the pass sizer apply to it unchanged; only the head differs (``heads``).
A pass runs one model: ``Served`` is the engine's one ``port.Model`` and sends each pass to
bge-m3, or to the cross-encoder when its batch is of rerank jobs (``Kind.RERANK``).

Each input is one (query, passage) pair's ids as FlagEmbedding's ``FlagReranker`` builds
them (``<s> query </s></s> passage </s>``: embsvc/core/rerank_pairs.py), and its output the
raw logit in float32; normalized scores (sigmoid) are the web side's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from gpu_pool.model.flops import flops_per_token
from gpu_pool.model.m3 import M3Model, Pass, use_threads
from gpu_pool.model.transfer import HostCopy, PassTimer, to_device
from gpu_pool.model.xlmr import PackedEncoder
from gpu_pool.wire import packing
from gpu_pool.wire.protocol import Kind

if TYPE_CHECKING:
    # For the checker only: nn.Module's ``__getattr__`` would type these submodules as ``Tensor | Module``.
    from transformers.models.xlm_roberta.modeling_xlm_roberta import (
        XLMRobertaClassificationHead,
        XLMRobertaForSequenceClassification,
    )


class NotServed(RuntimeError):
    """A rerank pass asked of an engine that holds no cross-encoder."""


class CrossEncoder:
    """The cross-encoder's weights on bge-m3's device, run over packed (query, passage) pairs."""

    def __init__(self, path: Path, embedder: M3Model) -> None:
        """On ``embedder``'s device, in its dtype, with its CPU threads, its attention kernel and its
        products (both chosen once for the device and dtype)."""
        self.path, self.embedder = path, embedder
        self.where, self.device, self.dtype = embedder.where, embedder.device, embedder.dtype
        loaded = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=self.dtype)
        model = cast("XLMRobertaForSequenceClassification", loaded)
        config = model.config
        if config.model_type != "xlm-roberta" or config.num_labels != 1:
            raise ValueError(f"{path} is no one-label XLM-RoBERTa cross-encoder (model_type={config.model_type!r}, "
                             f"num_labels={config.num_labels})")
        loaded.requires_grad_(False).to(self.device).eval()
        self.encoder = PackedEncoder(model.roberta, embedder.encoder.kernel, embedder.prepare,
                                     table=embedder.encoder.word.dtype, native=embedder.encoder.native)
        self.layers = len(self.encoder.layers)
        head: XLMRobertaClassificationHead = model.classifier
        self.dense = (head.dense.weight, head.dense.bias)
        self.out_proj = (head.out_proj.weight, head.out_proj.bias)
        self.pad_id = int(config.pad_token_id or 0)
        self.flops_per_token = flops_per_token(config.num_hidden_layers, config.hidden_size, config.intermediate_size)
        # XLM-R numbers positions from pad_id + 1: the most tokens a pair may have.
        self.max_positions = int(config.max_position_embeddings) - self.pad_id - 1

    def info(self) -> dict[str, object]:
        """What the web side reads of it (``EngineClient.info()["reranker"]``)."""
        return {"name": self.path.name, "path": str(self.path), "max_positions": self.max_positions,
                "dtype": self.embedder.dtype_name}

    @torch.inference_mode()
    def start(self, ids: np.ndarray, lengths: np.ndarray, kinds: Kind, colbert_texts: np.ndarray,
              step_tokens: int | None = None, one_thread: bool = False) -> Pass:
        """A pass over packed pairs, a part of a layer per ``step`` (as ``M3Model.start``)."""
        timer = PassTimer(self.where)
        positions = packing.positions(lengths, first=self.pad_id + 1)
        hidden = self.encoder.embed(self._tensor(ids), self._tensor(positions))
        return Pass(self, timer, hidden, lengths=lengths, kinds=kinds, colbert_texts=colbert_texts,
                    step_tokens=step_tokens, one_thread=one_thread)

    @torch.inference_mode()
    def heads(self, hidden: torch.Tensor, lengths: np.ndarray, kinds: Kind, colbert_texts: np.ndarray) -> HostCopy:
        """The classification head over each pair's ``<s>`` row, in the model's dtype as transformers
        runs it; the logits on their way to the host in float32."""
        first_rows = hidden[self._tensor(packing.token_starts(lengths))]
        logits = F.linear(torch.tanh(F.linear(first_rows, *self.dense)), *self.out_proj).squeeze(-1).float()
        return HostCopy([None, None, None, logits], self.where)

    def use_threads(self, tokens: int) -> None:
        """CPU threads for a pass of ``tokens`` tokens: bge-m3's rule, by the cross-encoder's own
        FLOPs (a tiny bge-m3 beside it, as in the tests, would keep its passes on one thread)."""
        use_threads(self.where, self.embedder.threads, tokens * self.flops_per_token)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return to_device(array, self.where)


class Served:
    """The engine's model (``port.Model``): bge-m3, and the cross-encoder where one is loaded. A
    pass runs one of them: the cross-encoder for a batch of rerank jobs, bge-m3 for any other."""

    def __init__(self, embedder: M3Model, reranker: CrossEncoder | None = None) -> None:
        self.embedder, self.reranker = embedder, reranker
        self.dim, self.device_name, self.dtype_name = embedder.dim, embedder.device_name, embedder.dtype_name
        self.reranks = reranker is not None

    def start(self, ids: np.ndarray, lengths: np.ndarray, kinds: Kind, colbert_texts: np.ndarray,
              step_tokens: int | None = None, one_thread: bool = False) -> Pass:
        if not kinds & Kind.RERANK:
            return self.embedder.start(ids, lengths, kinds, colbert_texts, step_tokens, one_thread)
        if self.reranker is None:
            raise NotServed("this engine holds no cross-encoder (RERANKER_PATH is not set)")
        return self.reranker.start(ids, lengths, kinds, colbert_texts, step_tokens, one_thread)

    def release_memory(self) -> None:
        self.embedder.release_memory()  # one device, one cache: both models' memory

    def info(self) -> dict[str, object]:
        """The engine's shared info: its device and dtype, and the cross-encoder's (None: none loaded)."""
        return {"device": self.device_name, "dtype": self.dtype_name,
                "reranker": None if self.reranker is None else self.reranker.info()}
