"""What the resources call: tokenize, hand the job to an engine, serialize the answer."""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

from embsvc.config import Settings
from embsvc.errors import InvalidRequest, Unavailable
from embsvc.serialize import dumps, embedding_items
from embsvc.tokenizer import TextTokenizer, truncate
from embsvc.validation import EmbeddingRequest
from gpu_pool.protocol import Kind
from gpu_pool.segment import Segment
from gpu_pool.shared import EngineState


class Engine(Protocol):
    """What the web app needs of the engine pool (``gpu_pool.client.EngineClient``)."""

    def states(self) -> list[EngineState]: ...
    def info(self) -> dict[str, object]: ...
    def snapshot(self) -> list[dict[str, object]]: ...
    def embed(self, ids: list[np.ndarray], kinds: Kind, dim: int) -> Segment: ...
    def score(self, ids: list[np.ndarray], weights: tuple[float, float, float], unused_ids: tuple[int, ...],
              dim: int) -> Segment: ...


KIND_NAMES = (("dense", Kind.DENSE), ("sparse", Kind.SPARSE), ("colbert", Kind.COLBERT))


class EmbeddingService:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings, self.engine = settings, engine
        self._tokenizer: TextTokenizer | None = None
        self._dim = 0
        self._lock = threading.Lock()

    def ready(self) -> bool:
        return EngineState.READY in self.engine.states()

    def tokenizer(self) -> TextTokenizer:
        """Loaded on first use: the model folder may still be downloading when the worker starts."""
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    if not self.ready():
                        raise Unavailable("the model is loading", headers={"Retry-After": "1"})
                    self._tokenizer = TextTokenizer(self.settings.model_path)
                    self._dim = int(self.engine.info()["dim"])
        return self._tokenizer

    @property
    def dim(self) -> int:
        """The model's vector size, known once ``tokenizer()`` has returned."""
        return self._dim

    def tokenize(self, texts: list[str], max_length: int, allow_truncation: bool) -> list[np.ndarray]:
        return self.cut(self.tokenizer().encode(texts), max_length, allow_truncation)

    @staticmethod
    def cut(encoded: list[np.ndarray], max_length: int, allow_truncation: bool) -> list[np.ndarray]:
        """Each input cut to ``max_length`` ids; with ``allow_truncation`` false a longer one is a 400."""
        if not allow_truncation:
            for i, ids in enumerate(encoded):
                if len(ids) > max_length:
                    raise InvalidRequest(
                        f"input[{i}] has {len(ids)} tokens, more than max_length {max_length}, "
                        "and truncate is false", param="input")
        return [truncate(ids, max_length) for ids in encoded]

    def embed(self, request: EmbeddingRequest) -> bytes:
        ids = self.tokenize(request.texts, request.max_length, request.truncate)
        with self.engine.embed(ids, request.kinds, self._dim) as segment:
            # Built in a helper so that no view of the segment outlives it.
            return self._body(segment, ids, request)

    def _body(self, segment: Segment, ids: list[np.ndarray], request: EmbeddingRequest) -> bytes:
        n_tokens = sum(len(x) for x in ids)
        tokenizer = self.tokenizer()
        data = embedding_items(segment.arrays, ids, request.kinds, request.encoding_format, tokenizer.unused_ids,
                               dtype=request.embedding_dtype,
                               decode=tokenizer.decode_each if request.sparse_tokens else None)
        return dumps({
            "object": "list",
            "model": self.settings.model_name,
            "embedding_types": [name for name, flag in KIND_NAMES if request.kinds & flag],
            "data": data,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        })
