"""Scoring and reranking: tokenize the query and the documents, let an engine
compute the scores from one forward pass, and answer without any vector
crossing to this worker.

A rerank is ranked by bge-m3's scores (``/v1/score``'s, one column chosen by ``mode``) or, where
one is served and the request names it, by the cross-encoder (``CrossEncoder``): one logit per
(query, document) pair, as FlagEmbedding's ``FlagReranker.compute_score`` gives it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from embsvc.core import rerank_pairs
from embsvc.core.backend import Backend
from embsvc.core.serialize import dumps
from embsvc.core.tokenizer import LazyTokenizer, cut, within_chars
from embsvc.errors import InvalidRequest, NotFound, Unavailable
from gpu_pool import DEFAULT_OPTIONS, SCORE_MODES, JobOptions

DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)  # dense, sparse, colbert: what BGE-M3's authors recommend
DEFAULT_MODE = "colbert+sparse+dense"


@dataclass(frozen=True)
class ScoreRequest:
    query: str
    documents: list[str]
    weights: tuple[float, float, float]  # dense, sparse, colbert
    max_length: int  # of the query and of each document
    truncate: bool
    truncation_direction: str = "right"  # "left": a long text loses its start instead of its end
    documents_field: str = "documents"  # the body field that holds the documents, to name a too-long one
    options: JobOptions = DEFAULT_OPTIONS  # its lane, and whether its client is still there


@dataclass(frozen=True)
class RerankRequest:
    scoring: ScoreRequest
    mode: str  # one of SCORE_MODES: bge-m3's score that ranks (the cross-encoder has one score only)
    top_n: int  # already at most the number of documents
    return_documents: bool
    cross_encoder: bool = False  # ranked by the cross-encoder, not by bge-m3's scores
    raw_scores: bool = False  # the cross-encoder's logits as they are; false: through a sigmoid, in 0..1


@dataclass(frozen=True)
class Scores:
    table: np.ndarray  # [documents, 5], the columns in SCORE_MODES order
    tokens: int  # of the query and the documents, after truncation


@dataclass(frozen=True)
class Ranking:
    best_first: list[int]  # the top_n documents' indices, best first; ties keep the input order
    relevance: np.ndarray  # [documents]: each document's score of the mode
    tokens: int


class CrossEncoder:
    """The cross-encoder's side of a rerank: the pairs' ids, and their logits from an engine."""

    def __init__(self, name: str, backend: Backend, tokenizer: LazyPairTokenizer) -> None:
        self.name, self.backend, self.tokenizer = name, backend, tokenizer

    def logits(self, request: ScoreRequest) -> tuple[np.ndarray, int]:
        """One raw logit per document, and the tokens of all the pairs."""
        ids = pair_ids(self.tokenizer.get(), request)
        return self.backend.rerank(ids, request.options), sum(len(x) for x in ids)


def pair_ids(tokenizer: Tokenizer, request: ScoreRequest) -> list[np.ndarray]:
    """Each document's (query, document) pair as FlagReranker builds it (``rerank_pairs``), of at most
    ``min(max_length, 512)`` tokens, FlagReranker's max_length: the query cut to 3/4 of that, the
    document to what is left. ``truncation_direction`` left (TEI's; FlagReranker has none) cuts the
    starts instead: the query and the documents are cut so before the pairs are built; ``truncate``
    false refuses a pair that would be cut."""
    max_length = min(request.max_length, rerank_pairs.DEFAULT_MAX_LENGTH)
    query_limit, room = max_length * 3 // 4, max_length - tokenizer.num_special_tokens_to_add(is_pair=True)
    texts = within_chars([request.query, *request.documents], max_length, True, direction=request.truncation_direction)
    encoded = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    query, documents = encoded[0], encoded[1:]
    if not request.truncate:
        for i, ids in enumerate(documents):
            if len(query) > query_limit or len(query) + len(ids) > room:
                raise InvalidRequest(f"the query and {request.documents_field}[{i}] make a pair of "
                                     f"{len(query) + len(ids) + max_length - room} tokens, more than the "
                                     f"cross-encoder's max_length {max_length}, and truncate is false",
                                     param=request.documents_field)
    if request.truncation_direction == "left":
        kept = query[-query_limit:]
        texts = tokenizer.decode_batch([kept, *(ids[-max(1, room - len(kept)):] for ids in documents)],
                                       skip_special_tokens=False)
    pairs = [(texts[0], document) for document in texts[1:]]
    return rerank_pairs.pair_ids(tokenizer, pairs, max_length)


class LazyPairTokenizer:
    """The cross-encoder's tokenizer, loaded on first use, as ``LazyTokenizer`` loads bge-m3's:
    its folder may still be downloading when the worker starts."""

    def __init__(self, model_path: Path, ready: Callable[[], bool]) -> None:
        self._path, self._ready = model_path, ready
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()

    def get(self) -> Tokenizer:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    if not self._ready():
                        raise Unavailable("the model is loading", headers={"Retry-After": "1"})
                    self._tokenizer = rerank_pairs.load_tokenizer(self._path)
        return self._tokenizer


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x), in a form that neither overflows nor warns at any float32 logit."""
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)


class ScoreService:
    def __init__(self, model_name: str, backend: Backend, tokenizer: LazyTokenizer,
                 reranker: CrossEncoder | None = None) -> None:
        """``reranker``: the cross-encoder, where one is served."""
        self.model_name, self.backend, self.tokenizer, self.reranker = model_name, backend, tokenizer, reranker

    def scores(self, request: ScoreRequest) -> Scores:
        tokenizer = self.tokenizer.get()
        field = request.documents_field

        def name(i: int) -> tuple[str, str]:  # how a too-long input is named: input 0 is the query
            return ("query", "query") if i == 0 else (f"{field}[{i - 1}]", field)

        texts = within_chars([request.query, *request.documents], request.max_length, request.truncate, name,
                             request.truncation_direction)
        ids = cut(tokenizer.encode(texts), request.max_length, request.truncate, name, request.truncation_direction)
        table = self.backend.score(ids, request.weights, tokenizer.unused_ids, request.options)
        return Scores(table, sum(len(x) for x in ids))

    def score(self, request: ScoreRequest) -> bytes:
        result = self.scores(request)
        return dumps({
            "object": "list",
            "model": self.model_name,
            "weights": list(request.weights),
            "data": [{"object": "score", "index": index, **dict(zip(SCORE_MODES, row, strict=True))}
                     for index, row in enumerate(result.table)],
            "usage": _usage(result.tokens),
        })

    def ranking(self, request: RerankRequest) -> Ranking:
        if request.cross_encoder:
            logits, tokens = self._reranker().logits(request.scoring)
            relevance = logits if request.raw_scores else sigmoid(logits)
        else:
            result = self.scores(request.scoring)
            relevance, tokens = result.table[:, SCORE_MODES.index(request.mode)], result.tokens
        best_first = np.argsort(-relevance, kind="stable")[: request.top_n]
        return Ranking(best_first.tolist(), relevance, tokens)

    def _reranker(self) -> CrossEncoder:
        if self.reranker is None:  # the request's parse refuses it first: this is the last guard
            raise NotFound(f"no cross-encoder is served here; this server serves {self.model_name!r}", param="model")
        return self.reranker

    def model_of(self, request: RerankRequest) -> str:
        """The name of the model that ranks ``request``, for its answer."""
        return self._reranker().name if request.cross_encoder else self.model_name

    def rerank(self, request: RerankRequest) -> bytes:
        ranking = self.ranking(request)
        documents = request.scoring.documents
        results = []
        for index in ranking.best_first:
            entry: dict[str, object] = {"index": index, "relevance_score": ranking.relevance[index]}
            if request.return_documents:
                entry["document"] = {"text": documents[index]}
            results.append(entry)
        # ``mode`` names which of bge-m3's scores ranked; the cross-encoder has one score only.
        mode = {} if request.cross_encoder else {"mode": request.mode}
        return dumps({
            "id": str(uuid.uuid4()),
            "object": "list",
            "model": self.model_of(request),
            **mode,
            "results": results,
            "usage": _usage(ranking.tokens),
        })


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}
