"""The answers of text-embeddings-inference's API (TEI), from the services behind this
server's own endpoints: the same tokenizing, truncation, batching and numbers, in TEI's
shapes (router/src/http/types.rs in TEI's repository)."""

from __future__ import annotations

from collections.abc import Callable

from embsvc.core.embedding import EmbeddingRequest, EmbeddingService
from embsvc.core.scoring import RerankRequest, ScoreService
from embsvc.core.serialize import dumps, dumps_list
from embsvc.core.tokenize import TokenizeService
from embsvc.core.tokenizer import Token
from embsvc.core.windows import Vectors
from gpu_pool import Kind


def _dense(result: Vectors) -> bytes:
    """``[[float]]``: one pooled vector per input (TEI's EmbedResponse)."""
    return dumps([result.dense(i) for i in range(len(result))])


def _sparse(result: Vectors) -> bytes:
    """``[[{"index", "value"}]]``: the lexical weights by token id (TEI's EmbedSparseResponse);
    the weights stay float32 scalars, so that they serialize as in /v1/embeddings."""
    items = []
    for i in range(len(result)):
        ids, weights = result.sparse(i)
        items.append([{"index": index, "value": value} for index, value in zip(ids.tolist(), weights, strict=True)])
    return dumps(items)


def _per_token(result: Vectors) -> bytes:
    """``[[[float]]]``: TEI's per-token vectors (EmbedAllResponse); here the ColBERT vectors,
    a row per token but the first: input by input, the worker's other requests moving between."""
    return b"".join(dumps_list(result.colbert(i) for i in range(len(result))))


_BODIES: dict[Kind, Callable[[Vectors], bytes]] = {
    Kind.DENSE: _dense, Kind.SPARSE: _sparse, Kind.COLBERT: _per_token}


def _token(token: Token) -> dict[str, object]:
    return {"id": token.id, "text": token.text, "special": token.special, "start": token.start, "stop": token.stop}


class TEIService:
    def __init__(self, embeddings: EmbeddingService, scores: ScoreService, tokens: TokenizeService) -> None:
        self.embeddings, self.scores, self.tokens = embeddings, scores, tokens

    def embed(self, request: EmbeddingRequest) -> bytes:
        """``request.kinds``: one kind, which picks the endpoint's answer."""
        return self.embeddings.render(request, _BODIES[request.kinds])

    def rerank(self, request: RerankRequest) -> bytes:
        """``[{"index", "score", "text"?}]``, best first, with the scores of /v1/rerank."""
        ranking = self.scores.ranking(request)
        texts = request.scoring.documents
        ranks: list[dict[str, object]] = []
        for index in ranking.best_first:
            rank: dict[str, object] = {"index": index, "score": ranking.relevance[index]}
            if request.return_documents:
                rank["text"] = texts[index]
            ranks.append(rank)
        return dumps(ranks)

    def tokenize(self, texts: list[str], add_special_tokens: bool) -> bytes:
        return dumps([[_token(t) for t in tokens] for tokens in self.tokens.spans(texts, add_special_tokens)])

    def decode(self, ids: list[list[int]], skip_special_tokens: bool) -> bytes:
        return dumps(self.tokens.decode(ids, skip_special_tokens))
