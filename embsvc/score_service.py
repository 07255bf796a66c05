"""Scoring and reranking: tokenize the query and the documents, let an engine
compute the scores from one forward pass, and answer without any vector
crossing to this worker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from embsvc.errors import InvalidRequest
from embsvc.score_request import RerankRequest, ScoreRequest
from embsvc.serialize import dumps
from embsvc.service import EmbeddingService
from embsvc.tokenizer import truncate
from gpu_pool.protocol import SCORE_MODES


@dataclass(frozen=True)
class Scores:
    table: np.ndarray  # [documents, 5], the columns in SCORE_MODES order
    tokens: int  # of the query and the documents, after truncation


class ScoreService:
    def __init__(self, service: EmbeddingService) -> None:
        self.service = service

    def scores(self, request: ScoreRequest) -> Scores:
        tokenizer = self.service.tokenizer()
        encoded = tokenizer.encode([request.query, *request.documents])
        if not request.truncate:
            _refuse_too_long(encoded, request.max_length)
        ids = [truncate(x, request.max_length) for x in encoded]
        unused_ids = tuple(tokenizer.unused_ids.tolist())
        with self.service.engine.score(ids, request.weights, unused_ids, self.service.dim) as segment:
            table = segment.arrays["scores"].copy()
        return Scores(table, sum(len(x) for x in ids))

    def score(self, request: ScoreRequest) -> bytes:
        result = self.scores(request)
        return dumps({
            "object": "list",
            "model": self.service.settings.model_name,
            "weights": list(request.weights),
            "data": [{"object": "score", "index": index, **dict(zip(SCORE_MODES, row, strict=True))}
                     for index, row in enumerate(result.table)],
            "usage": _usage(result.tokens),
        })

    def rerank(self, request: RerankRequest) -> bytes:
        result = self.scores(request.scoring)
        relevance = result.table[:, SCORE_MODES.index(request.mode)]
        best_first = np.argsort(-relevance, kind="stable")[: request.top_n]  # ties keep the input order
        documents = request.scoring.documents
        results = []
        for index in best_first.tolist():
            entry: dict = {"index": index, "relevance_score": relevance[index]}
            if request.return_documents:
                entry["document"] = {"text": documents[index]}
            results.append(entry)
        return dumps({
            "id": str(uuid.uuid4()),
            "object": "list",
            "model": self.service.settings.model_name,
            "mode": request.mode,
            "results": results,
            "usage": _usage(result.tokens),
        })


def _refuse_too_long(encoded: list[np.ndarray], limit: int) -> None:
    for i, ids in enumerate(encoded):
        if len(ids) > limit:
            where, param = ("query", "query") if i == 0 else (f"documents[{i - 1}]", "documents")
            raise InvalidRequest(f"{where} has {len(ids)} tokens, more than max_length {limit}, and truncate is false",
                                 param=param)


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}
