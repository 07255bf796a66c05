"""What the client returns, and the decoding of the server's base64 payloads into numpy arrays."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

DType = Literal["float32", "float16"]
Array = npt.NDArray[np.floating[Any]]

# The server writes little-endian floats (docs/api.md, encoding_format "base64").
_WIRE: dict[str, np.dtype[np.floating[Any]]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


@dataclass(frozen=True)
class Embeddings:
    """The vectors of ``texts``, in input order; a kind not asked for is ``None``.

    - ``dense``: one array ``[texts, dim]`` (L2-normalised rows; dim is 1024 for bge-m3).
    - ``sparse``: per text, ``{token id: weight}``.
    - ``colbert``: per text, an array ``[tokens - 1, dim]`` (one row per token but ``<s>``).
    - ``prompt_tokens``: tokens the server ran through the model, summed over the batches.
    """

    dense: Array | None
    sparse: list[dict[int, float]] | None
    colbert: list[Array] | None
    prompt_tokens: int

    def __len__(self) -> int:
        for kind in (self.dense, self.sparse, self.colbert):
            if kind is not None:
                return len(kind)
        return 0


@dataclass(frozen=True)
class Score:
    """One document's scores against the query (``POST /v1/score``); ``index`` is its position."""

    index: int
    dense: float
    sparse: float
    colbert: float
    sparse_dense: float
    colbert_sparse_dense: float


@dataclass(frozen=True)
class Ranked:
    """One document of a ranking (``POST /v1/rerank``): its position in the input, score and text."""

    index: int
    score: float
    document: str


@dataclass(frozen=True)
class Tokens:
    """One text's tokens (``POST /tokenize``), cut as an embedding of it is cut."""

    ids: list[int]
    tokens: list[str]
    count: int
    untruncated_count: int
    truncated: bool


def floats(payload: str, dtype: DType) -> Array:
    """A base64 payload as a flat, writable array of ``dtype`` in this machine's byte order."""
    wire = _WIRE[dtype]
    return np.frombuffer(base64.b64decode(payload), dtype=wire).astype(wire.newbyteorder("="))


def sparse_weights(payload: dict[str, float]) -> dict[int, float]:
    """``sparse_embedding`` with its keys as ints (JSON object keys are strings)."""
    return {int(token): float(weight) for token, weight in payload.items()}


def score_from(item: dict[str, Any], offset: int) -> Score:
    return Score(index=offset + item["index"], dense=item["dense"], sparse=item["sparse"], colbert=item["colbert"],
                 sparse_dense=item["sparse+dense"], colbert_sparse_dense=item["colbert+sparse+dense"])


def tokens_from(item: dict[str, Any]) -> Tokens:
    return Tokens(ids=item["ids"], tokens=item["tokens"], count=item["count"],
                  untruncated_count=item["untruncated_count"], truncated=item["truncated"])
