"""The OpenAPI 3.1 document of the service, built from the settings."""

from __future__ import annotations

from typing import Any

from embsvc import __version__
from embsvc.config import Settings
from embsvc.core.windows import DENSE_DIM
from embsvc.openapi import tei
from embsvc.openapi.scoring import PRIORITY, scoring_paths

_ERROR = {"$ref": "#/components/responses/Error"}


def _errors(*statuses: int) -> dict[str, dict[str, str]]:
    return {str(s): _ERROR for s in statuses}


def _get(summary: str, schema: dict[str, Any], secured: bool, *errors: int) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}}, **_errors(*errors)}}
    if not secured:
        op["security"] = []
    else:
        op["responses"].update(_errors(401))
    return {"get": op}


def _model_ids(settings: Settings) -> list[str]:
    """What ``/v1/models/{model_id}`` answers: bge-m3's names, and the cross-encoder's where one is served."""
    return [*settings.model_names(), *(settings.reranker_names() if settings.reranker_path else ())]


def build_openapi(settings: Settings) -> dict[str, Any]:
    bool_field = {"type": "boolean"}
    base64_string = {"type": "string", "contentEncoding": "base64"}
    vector = {"oneOf": [{"type": "array", "items": {"type": "number"}}, base64_string]}
    request = {
        "type": "object",
        "required": ["input"],
        "properties": {
            "input": {"oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "maxItems": settings.max_inputs,
                 "items": {"type": "string", "minLength": 1}}]},
            "model": {"type": "string", "enum": list(settings.model_names()), "default": settings.model_name},
            "return_dense": {**bool_field, "default": "dense" in settings.default_return},
            "return_sparse": {**bool_field, "default": "sparse" in settings.default_return},
            "return_colbert": {**bool_field, "default": "colbert" in settings.default_return},
            "encoding_format": {"type": "string", "enum": ["float", "base64"], "default": "float"},
            "embedding_dtype": {"type": "string", "enum": ["float32", "float16"], "default": "float32",
                                "description": "little-endian width of the base64 payloads; float16 needs base64"},
            "return_sparse_tokens": {**bool_field, "default": False,
                                     "description": "add sparse_tokens: each token's text with its weight"},
            "max_length": {"type": "integer", "minimum": 1, "maximum": settings.max_tokens,
                           "default": settings.max_tokens},
            "truncate": {**bool_field, "default": True},
            "dimensions": {"type": ["integer", "null"], "minimum": 1, "maximum": DENSE_DIM, "default": None,
                           "description": "the dense vector's first n components, L2-normalised again; "
                                          "bge-m3 was not trained for shortened vectors"},
            "chunk_long_inputs": {**bool_field, "default": settings.chunk_long_inputs,
                                  "description": "embed an input longer than max_length in windows of max_length "
                                                 "tokens and combine them, instead of truncating it; at most "
                                                 f"{settings.max_request_tokens} tokens in all (MAX_REQUEST_TOKENS)"},
            "user": {"type": ["string", "null"]},
            "priority": PRIORITY,
        },
    }
    item = {
        "type": "object",
        "required": ["object", "index", "dense_embedding", "sparse_embedding", "colbert_embedding"],
        "properties": {
            "object": {"const": "embedding"},
            "index": {"type": "integer"},
            "embedding": vector,
            "dense_embedding": {"oneOf": [vector, {"type": "null"}]},
            "sparse_embedding": {"oneOf": [{"type": "object", "additionalProperties": {"type": "number"}},
                                           {"type": "null"}]},
            "sparse_tokens": {"type": "object", "additionalProperties": {"type": "number"}},
            "colbert_embedding": {"oneOf": [
                {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                base64_string, {"type": "null"}]},
        },
    }
    response = {
        "type": "object",
        "required": ["object", "model", "embedding_types", "data", "usage"],
        "properties": {
            "object": {"const": "list"},
            "model": {"type": "string"},
            "embedding_types": {"type": "array", "items": {"enum": ["dense", "sparse", "colbert"]}},
            "data": {"type": "array", "items": item},
            "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                                       "total_tokens": {"type": "integer"}}},
        },
    }
    error = {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "object", "required": ["message", "type"], "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}},
            "detail": {"type": "string"},
        },
    }
    model = {"type": "object", "required": ["id", "object"], "properties": {
        "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
        "owned_by": {"type": "string"}}}
    obj = {"type": "object"}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "BGE-M3 embedding server", "version": __version__,
                 "description": "Dense, sparse and ColBERT vectors of BAAI/bge-m3 from one forward pass."},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/embeddings": {"post": {
                "summary": "Embed texts",
                "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                "responses": {"200": {"description": "The vectors",
                                      "content": {"application/json": {"schema": response}}},
                              **_errors(400, 401, 404, 413, 500, 503, 504)},
            }},
            "/health": _get("Readiness: 200 once the model answers", obj, False, 503),
            "/stats": _get("Batching statistics across all web workers", obj, True),
            "/v1/models": _get("The served models", {"type": "object", "properties": {
                "object": {"const": "list"}, "data": {"type": "array", "items": model}}}, True),
            "/v1/models/{model_id}": {**_get("One model", model, True, 404), "parameters": [
                {"name": "model_id", "in": "path", "required": True,
                 "schema": {"type": "string", "enum": _model_ids(settings)}}]},
            "/": _get("Service information", obj, False),
            "/metrics": {"get": {
                "summary": "Prometheus metrics of every web worker and engine",
                "security": [],
                "responses": {"200": {"description": "Prometheus text format (OpenMetrics when the Accept header "
                                                     "asks for it)",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }},
            "/openapi.json": _get("This document", obj, False),
            **scoring_paths(settings),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"EmbeddingRequest": request, "EmbeddingResponse": response, "Error": error},
            "responses": {"Error": {"description": "An error",
                                    "content": {"application/json": {"schema": error}}}},
        },
    }
    _add_later_paths(document, settings)
    return document


def _add_later_paths(document: dict[str, Any], settings: Settings) -> None:
    """The API page, the detailed health, and text-embeddings-inference's API."""
    paths, components = document["paths"], document["components"]
    paths["/health/detailed"] = _get("Detailed health: the model, each engine, the batching figures (the "
                                     "original service's /health/detailed)", {"type": "object"}, True)
    paths["/docs"] = {"get": {
        "summary": "The interactive API page (Swagger UI) of this document", "security": [],
        "responses": {"200": {"description": "An HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}},
    }}
    for path, item in tei.tei_paths(settings).items():
        paths[path] = {**paths.get(path, {}), **item}  # "/" keeps its GET beside TEI's POST
    paths["/tokenize"] = tei.with_tei_tokenize(paths["/tokenize"], settings)
    for section, entries in tei.components().items():
        components[section].update(entries)
