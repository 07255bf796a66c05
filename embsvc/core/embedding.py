"""Embedding texts: tokenize, hand the job to an engine, serialize the vectors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from embsvc.core.backend import Backend
from embsvc.core.serialize import Decode, dumps_items, embedding_items
from embsvc.core.tokenizer import (
    LazyTokenizer,
    TextTokenizer,
    check_request_chars,
    check_request_tokens,
    cut,
    within_chars,
)
from embsvc.core.windows import Vectors, Windowed, split_all
from gpu_pool import DEFAULT_OPTIONS, JobOptions, Kind, has_kind

KIND_NAMES = (("dense", Kind.DENSE), ("sparse", Kind.SPARSE), ("colbert", Kind.COLBERT))

# Serializes a result while its shared memory is open: views of it must not outlive the call.
Render = Callable[[Vectors], bytes]


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    kinds: Kind
    encoding_format: str  # "float" or "base64"
    max_length: int
    truncate: bool
    embedding_dtype: str = "float32"  # of the base64 payloads: "float32" or "float16"
    sparse_tokens: bool = False  # add the token texts beside the sparse ids
    truncation_direction: str = "right"  # "left": a long text loses its start instead of its end
    field: str = "input"  # the body field that holds the texts, to name a too-long one
    options: JobOptions = DEFAULT_OPTIONS  # its lane, and whether its client is still there
    dimensions: int | None = None  # dense vectors cut to their first n components (None: whole)
    chunk_long_inputs: bool = False  # an input past max_length is cut into windows, not truncated
    max_request_tokens: int = 0  # with chunk_long_inputs: the most tokens of all windows together


class EmbeddingService:
    def __init__(self, model_name: str, backend: Backend, tokenizer: LazyTokenizer) -> None:
        self.model_name, self.backend, self.tokenizer = model_name, backend, tokenizer

    def embed(self, request: EmbeddingRequest) -> bytes:
        decode = self.tokenizer.get().decode_each if request.sparse_tokens else None
        return self.render(request, lambda result: self._body(result, request, decode))

    def render(self, request: EmbeddingRequest, body: Render) -> bytes:
        """Tokenize, embed, and answer with ``body(result)``: the other APIs' shapes
        (TEI's) come from the same tokenizing, truncation and batching."""
        tokenizer = self.tokenizer.get()
        ids, counts = self._windows(request, tokenizer) if request.chunk_long_inputs else self._cut(request, tokenizer)
        # float16 payloads: the engine sends float16 vectors (half the bytes), nothing to convert here.
        kinds = (request.kinds | Kind.HALF) if request.embedding_dtype == "float16" else request.kinds
        with self.backend.embed(ids, kinds, tokenizer.unused_ids, request.options) as result:
            if counts is None and request.dimensions is None:
                return body(result)
            return body(Windowed(result, counts or [1] * len(result), request.dimensions))

    @staticmethod
    def _cut(request: EmbeddingRequest, tokenizer: TextTokenizer) -> tuple[list[np.ndarray], None]:
        """Each input truncated to ``max_length`` (or refused, with ``truncate`` false)."""
        def name(i: int) -> tuple[str, str]:
            return f"{request.field}[{i}]", request.field

        texts = within_chars(request.texts, request.max_length, request.truncate, name, request.truncation_direction)
        return cut(tokenizer.encode(texts), request.max_length, request.truncate, name,
                   request.truncation_direction), None

    @staticmethod
    def _windows(request: EmbeddingRequest, tokenizer: TextTokenizer) -> tuple[list[np.ndarray], list[int] | None]:
        """Every input's windows of at most ``max_length`` tokens (windows.py), and how many each has;
        past the request's bounds a 413, before anything is computed. None: every input is one window."""
        check_request_chars(request.texts, request.max_request_tokens, request.field)
        windows, counts = split_all(tokenizer.encode(request.texts), request.max_length)
        check_request_tokens(sum(len(w) for w in windows), request.max_request_tokens, request.field)
        return windows, (counts if len(windows) > len(counts) else None)

    def _body(self, result: Vectors, request: EmbeddingRequest, decode: Decode | None) -> bytes:
        n_tokens = sum(len(x) for x in result.ids)
        return dumps_items(
            {"object": "list", "model": self.model_name,
             "embedding_types": [name for name, flag in KIND_NAMES if has_kind(request.kinds, flag)]},
            "data", embedding_items(result, request.kinds, request.encoding_format, request.embedding_dtype, decode),
            {"usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})
