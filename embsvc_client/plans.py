"""Each call as a plan: the request body of every batch, and how their answers make one result.

Pure functions, no I/O: ``Client`` and ``AsyncClient`` only send a plan's bodies (in order,
or several at once) and hand the answers, in batch order, to ``plan.finish``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from embsvc_client.results import (
    DType,
    Embeddings,
    Ranked,
    Score,
    Tokens,
    floats,
    score_from,
    sparse_weights,
    tokens_from,
)

T = TypeVar("T")
Answer = dict[str, Any]

DEFAULT_MODE = "colbert+sparse+dense"


@dataclass(frozen=True)
class Plan(Generic[T]):
    path: str
    bodies: list[dict[str, Any]]  # one request body per batch
    sizes: list[int]  # inputs in each batch, for the progress bar
    finish: Callable[[list[Answer]], T]  # the answers in batch order -> the result


def batches(items: Sequence[str], size: int) -> list[Sequence[str]]:
    """``items`` in consecutive slices of at most ``size``."""
    if size < 1:
        raise ValueError("batch_size must be at least 1")
    if not items:
        raise ValueError("nothing to send: the list of texts is empty")
    return [items[start:start + size] for start in range(0, len(items), size)]


def as_texts(texts: str | Sequence[str]) -> Sequence[str]:
    """A string is one text, as the server reads ``input``."""
    return [texts] if isinstance(texts, str) else texts


def offsets(sizes: list[int]) -> list[int]:
    """Where each batch starts in the whole input."""
    return [0, *itertools.accumulate(sizes)][:-1]


def _split(items: Sequence[str], batch_size: int, field: str, options: dict[str, Any]) -> tuple[
        list[dict[str, Any]], list[int]]:
    """One body per batch, ``items`` under ``field`` beside the same ``options``; and each batch's size."""
    chunks = batches(items, batch_size)
    return [{**options, field: list(chunk)} for chunk in chunks], [len(chunk) for chunk in chunks]


def _limits(max_length: int | None, truncate: bool) -> dict[str, Any]:
    return {"truncate": truncate} | ({} if max_length is None else {"max_length": max_length})


def embed(texts: Sequence[str], batch_size: int, *, dense: bool, sparse: bool, colbert: bool, dtype: DType,
          max_length: int | None, truncate: bool) -> Plan[Embeddings]:
    if dtype not in ("float32", "float16"):
        raise ValueError('dtype must be "float32" or "float16"')
    # The ColBERT payload is one flat string: the dense vector, one row more, gives its width.
    options = {"return_dense": dense or colbert, "return_sparse": sparse, "return_colbert": colbert,
               "encoding_format": "base64", "embedding_dtype": dtype, **_limits(max_length, truncate)}
    finish = functools.partial(_embeddings, dense=dense, sparse=sparse, colbert=colbert, dtype=dtype)
    return Plan("/v1/embeddings", *_split(texts, batch_size, "input", options), finish)


def _embeddings(answers: list[Answer], *, dense: bool, sparse: bool, colbert: bool, dtype: DType) -> Embeddings:
    items = [item for answer in answers for item in answer["data"]]
    vectors = [floats(item["dense_embedding"], dtype) for item in items] if dense or colbert else []
    return Embeddings(
        dense=np.stack(vectors) if dense else None,
        sparse=[sparse_weights(item["sparse_embedding"]) for item in items] if sparse else None,
        colbert=[floats(item["colbert_embedding"], dtype).reshape(-1, vector.size)
                 for item, vector in zip(items, vectors, strict=True)] if colbert else None,
        prompt_tokens=sum(answer["usage"]["prompt_tokens"] for answer in answers),
    )


def _scoring_options(query: str, weights: Sequence[float] | None, max_length: int | None,
                     truncate: bool) -> dict[str, Any]:
    return {"query": query, **_limits(max_length, truncate)} | ({} if weights is None else {"weights": list(weights)})


def score(query: str, documents: Sequence[str], batch_size: int, *, weights: Sequence[float] | None,
          max_length: int | None, truncate: bool) -> Plan[list[Score]]:
    bodies, sizes = _split(documents, batch_size, "documents", _scoring_options(query, weights, max_length, truncate))
    return Plan("/v1/score", bodies, sizes, functools.partial(_scores, starts=offsets(sizes)))


def _scores(answers: list[Answer], *, starts: list[int]) -> list[Score]:
    return [score_from(item, start) for answer, start in zip(answers, starts, strict=True) for item in answer["data"]]


def rerank(query: str, documents: Sequence[str], batch_size: int, *, top_n: int | None, mode: str,
           weights: Sequence[float] | None, max_length: int | None, truncate: bool) -> Plan[list[Ranked]]:
    if top_n is not None and top_n < 1:
        raise ValueError("top_n must be at least 1")
    # Every batch ranks all its documents: the best top_n may all lie in one batch.
    options = {"mode": mode, **_scoring_options(query, weights, max_length, truncate)}
    bodies, sizes = _split(documents, batch_size, "documents", options)
    finish = functools.partial(_ranking, starts=offsets(sizes), documents=documents, top_n=top_n)
    return Plan("/v1/rerank", bodies, sizes, finish)


def _ranking(answers: list[Answer], *, starts: list[int], documents: Sequence[str],
             top_n: int | None) -> list[Ranked]:
    scored = [(start + result["index"], float(result["relevance_score"]))
              for answer, start in zip(answers, starts, strict=True) for result in answer["results"]]
    scored.sort(key=lambda pair: (-pair[1], pair[0]))  # best first; ties in input order, as the server orders them
    return [Ranked(index, value, documents[index]) for index, value in scored[:top_n]]


def tokenize(texts: Sequence[str], batch_size: int, *, max_length: int | None, truncate: bool) -> Plan[list[Tokens]]:
    return Plan("/tokenize", *_split(texts, batch_size, "input", _limits(max_length, truncate)), _tokens)


def _tokens(answers: list[Answer]) -> list[Tokens]:
    return [tokens_from(item) for answer in answers for item in answer["data"]]
