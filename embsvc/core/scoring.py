"""Scoring and reranking: tokenize the query and the documents, let an engine
compute the scores from one forward pass, and answer without any vector
crossing to this worker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from embsvc.core.backend import Backend
from embsvc.core.serialize import dumps
from embsvc.core.tokenizer import LazyTokenizer, cut, within_chars
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
    mode: str  # one of SCORE_MODES
    top_n: int  # already at most the number of documents
    return_documents: bool


@dataclass(frozen=True)
class Scores:
    table: np.ndarray  # [documents, 5], the columns in SCORE_MODES order
    tokens: int  # of the query and the documents, after truncation


@dataclass(frozen=True)
class Ranking:
    best_first: list[int]  # the top_n documents' indices, best first; ties keep the input order
    relevance: np.ndarray  # [documents]: each document's score of the mode
    tokens: int


class ScoreService:
    def __init__(self, model_name: str, backend: Backend, tokenizer: LazyTokenizer) -> None:
        self.model_name, self.backend, self.tokenizer = model_name, backend, tokenizer

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
        result = self.scores(request.scoring)
        relevance = result.table[:, SCORE_MODES.index(request.mode)]
        best_first = np.argsort(-relevance, kind="stable")[: request.top_n]
        return Ranking(best_first.tolist(), relevance, result.tokens)

    def rerank(self, request: RerankRequest) -> bytes:
        ranking = self.ranking(request)
        documents = request.scoring.documents
        results = []
        for index in ranking.best_first:
            entry: dict[str, object] = {"index": index, "relevance_score": ranking.relevance[index]}
            if request.return_documents:
                entry["document"] = {"text": documents[index]}
            results.append(entry)
        return dumps({
            "id": str(uuid.uuid4()),
            "object": "list",
            "model": self.model_name,
            "mode": request.mode,
            "results": results,
            "usage": _usage(ranking.tokens),
        })


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}
