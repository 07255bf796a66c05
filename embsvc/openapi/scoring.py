"""The OpenAPI paths and schemas of ``/v1/score``, ``/v1/rerank`` and ``/tokenize``."""

from __future__ import annotations

from typing import Any

from embsvc.config import Settings
from embsvc.core.scoring import DEFAULT_MODE, DEFAULT_WEIGHTS
from gpu_pool import SCORE_MODES

_ERROR = {"$ref": "#/components/responses/Error"}
# The lane of a request that reaches the model (docs/api.md, Conventions); null: by its size.
PRIORITY = {"type": ["string", "null"], "enum": ["interactive", "bulk", None],
            "description": "interactive (a query: goes first) or bulk (indexing); absent or null: by size; "
                           "or the X-Priority header"}
_ERRORS = {str(status): _ERROR for status in (400, 401, 404, 413, 500, 503, 504)}


def _post(summary: str, description: str, request: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "description": description,
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": response}}},
                      **_ERRORS},
    }}


def _common(settings: Settings) -> dict[str, Any]:
    """The fields that score and rerank requests share."""
    text = {"type": "string", "minLength": 1}
    return {
        "query": text,
        "documents": {"type": "array", "minItems": 1, "maxItems": settings.max_inputs, "items": {"oneOf": [
            text, {"type": "object", "required": ["text"], "properties": {"text": text}}]}},
        "weights": {"type": "array", "minItems": 3, "maxItems": 3, "items": {"type": "number", "minimum": 0},
                    "default": list(DEFAULT_WEIGHTS),
                    "description": "[dense, sparse, colbert]; dense + sparse must be above 0"},
        "model": {"type": "string", "enum": list(settings.model_names()), "default": settings.model_name},
        "max_length": {"type": "integer", "minimum": 1, "maximum": settings.max_tokens,
                       "default": settings.max_tokens, "description": "tokens of the query and of each document"},
        "truncate": {"type": "boolean", "default": True},
        "priority": PRIORITY,
    }


def _usage() -> dict[str, Any]:
    return {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                             "total_tokens": {"type": "integer"}}}


def score_path(settings: Settings) -> dict[str, Any]:
    request = {"type": "object", "required": ["query", "documents"], "properties": _common(settings)}
    item = {"type": "object", "required": ["object", "index", *SCORE_MODES], "properties": {
        "object": {"const": "score"}, "index": {"type": "integer"},
        **{mode: {"type": "number"} for mode in SCORE_MODES}}}
    response = {"type": "object", "required": ["object", "model", "weights", "data", "usage"], "properties": {
        "object": {"const": "list"}, "model": {"type": "string"},
        "weights": {"type": "array", "items": {"type": "number"}},
        "data": {"type": "array", "items": item}, "usage": _usage()}}
    return _post(
        "Hybrid BGE-M3 scores of documents for a query",
        "Every score of FlagEmbedding's BGEM3FlagModel.compute_score, from one forward pass of the query "
        "and the documents; data is in document order.", request, response)


def rerank_path(settings: Settings) -> dict[str, Any]:
    nullable_int = {"type": ["integer", "null"], "minimum": 1}
    common = _common(settings)
    # A rerank option sent as null keeps its default (what Cohere's and Jina's clients send).
    optional: dict[str, Any] = {name: {"anyOf": [schema, {"type": "null"}]} for name, schema in common.items()
                if name not in ("query", "documents")}
    # model chooses what ranks: the cross-encoder by its names, where one is served; bge-m3's scores else.
    names = [*settings.model_names(), *(settings.reranker_names() if settings.reranker_path else ())]
    optional["model"] = {"anyOf": [{"type": "string", "enum": names}, {"type": "null"}],
                         "default": settings.model_name, "description": _model_choice(settings)}
    request = {"type": "object", "required": ["query", "documents"], "properties": {
        **common, **optional,
        "top_n": {**nullable_int, "description": "results to return; default all"},
        "return_documents": {"type": ["boolean", "null"], "default": False},
        "mode": {"type": ["string", "null"], "enum": [*SCORE_MODES, None], "default": DEFAULT_MODE},
        "max_tokens_per_doc": {**nullable_int, "maximum": settings.max_tokens,
                               "description": "Cohere v2's name for max_length"}}}
    result = {"type": "object", "required": ["index", "relevance_score"], "properties": {
        "index": {"type": "integer"}, "relevance_score": {"type": "number"},
        "document": {"type": "object", "properties": {"text": {"type": "string"}}}}}
    response = {"type": "object", "required": ["id", "model", "results", "usage"], "properties": {
        "id": {"type": "string"}, "object": {"const": "list"}, "model": {"type": "string"},
        "mode": {"enum": list(SCORE_MODES), "description": "absent when the cross-encoder ranked"},
        "results": {"type": "array", "items": result}, "usage": _usage()}}
    return _post(
        "Rerank documents for a query (Cohere- and Jina-style)",
        f"results are best first. {_model_choice(settings)} Also served at /v2/rerank for Cohere's v2 clients.",
        request, response)


def _model_choice(settings: Settings) -> str:
    hybrid = (f"model {settings.model_name} (or absent): relevance_score is bge-m3's weighted mode score "
              "(colbert+sparse+dense unless mode says otherwise).")
    if settings.reranker_path is None:
        return hybrid
    return (f"{hybrid} model {settings.reranker_name}: the cross-encoder's score, the sigmoid of its logit "
            "(mode and weights are refused).")


def tokenize_path(settings: Settings) -> dict[str, Any]:
    request = {"type": "object", "required": ["input"], "properties": {
        "input": {"oneOf": [{"type": "string", "minLength": 1},
                            {"type": "array", "minItems": 1, "maxItems": settings.max_inputs,
                             "items": {"type": "string", "minLength": 1}}]},
        "model": {"type": "string", "enum": list(settings.model_names()), "default": settings.model_name},
        "max_length": {"type": "integer", "minimum": 1, "maximum": settings.max_tokens,
                       "default": settings.max_tokens},
        "truncate": {"type": "boolean", "default": True}}}
    item = {"type": "object", "required": ["object", "index", "ids", "tokens", "count", "untruncated_count",
                                           "truncated"], "properties": {
        "object": {"const": "tokens"}, "index": {"type": "integer"},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "tokens": {"type": "array", "items": {"type": "string"}},
        "count": {"type": "integer", "description": "ids after truncation, special tokens included"},
        "untruncated_count": {"type": "integer"}, "truncated": {"type": "boolean"}}}
    response = {"type": "object", "required": ["object", "model", "data", "usage"], "properties": {
        "object": {"const": "list"}, "model": {"type": "string"}, "data": {"type": "array", "items": item},
        "usage": _usage()}}
    return _post("Token ids, tokens and counts", "The same truncation as /v1/embeddings; no engine is involved.",
                 request, response)


def scoring_paths(settings: Settings) -> dict[str, Any]:
    rerank = rerank_path(settings)
    return {"/v1/score": score_path(settings), "/v1/rerank": rerank, "/v2/rerank": rerank,
            "/tokenize": tokenize_path(settings)}
