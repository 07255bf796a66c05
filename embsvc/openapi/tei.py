"""The OpenAPI paths of text-embeddings-inference's API (api/tei.py), written from TEI's own
document (its docs/openapi.json): the same fields and shapes, with this server's limits, and
only the values it serves (a prompt, un-normalised or shortened vectors are refused)."""

from __future__ import annotations

from typing import Any

from embsvc.config import Settings
from embsvc.core.windows import DENSE_DIM

TEI_ERROR_TYPES = ["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty", "Unauthorized"]
_TEI_ERROR = {"$ref": "#/components/responses/TEIError"}
# Every status a TEI path may answer with (embsvc/errors.py, tei_status).
TEI_STATUSES = (400, 401, 413, 422, 424, 429, 500, 503, 504)

Schema = dict[str, Any]


def components() -> dict[str, Schema]:
    """To merge into the document's ``components``."""
    error = {"type": "object", "required": ["error", "error_type"], "properties": {
        "error": {"type": "string"}, "error_type": {"type": "string", "enum": TEI_ERROR_TYPES}}}
    return {"schemas": {"TEIError": error},
            "responses": {"TEIError": {"description": "An error, in TEI's shape",
                                       "content": {"application/json": {"schema": error}}}}}


_TEXT = {"type": "string", "minLength": 1}


def _inputs(settings: Settings) -> Schema:
    return {"oneOf": [_TEXT, {"type": "array", "minItems": 1, "maxItems": settings.max_inputs, "items": _TEXT}]}


def _truncation() -> dict[str, Schema]:
    return {
        "truncate": {"type": ["boolean", "null"], "default": True,
                     "description": "cut a text longer than max_input_length (null: the default, true); "
                                    "false: such a text is a 422"},
        "truncation_direction": {"type": "string", "enum": ["right", "left", "Right", "Left"], "default": "right",
                                 "description": "left: a long text loses its start instead of its end"},
    }


def _no_prompt() -> Schema:
    return {"type": "null", "description": "BGE-M3 has no prompts: a name is refused (422)"}


def _post(summary: str, description: str, request: Schema, response: Schema) -> Schema:
    return {"post": {
        "tags": ["Text Embeddings Inference"],
        "summary": summary,
        "description": description,
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": response}}},
                      **{str(status): _TEI_ERROR for status in TEI_STATUSES}},
    }}


def _chunking(settings: Settings) -> Schema:
    return {"type": "boolean", "default": settings.chunk_long_inputs,
            "description": "embed a text longer than max_input_length in windows of that many tokens and combine "
                           f"them, instead of truncating it; at most {settings.max_request_tokens} tokens in all "
                           "(MAX_REQUEST_TOKENS). Not in TEI"}


def _embed_request(settings: Settings, **extra: Schema) -> Schema:
    return {"type": "object", "required": ["inputs"], "properties": {
        "inputs": _inputs(settings), **_truncation(), "prompt_name": _no_prompt(),
        "chunk_long_inputs": _chunking(settings), **extra}}


def embed_path(settings: Settings) -> Schema:
    request = _embed_request(
        settings,
        normalize={"type": "boolean", "enum": [True], "default": True,
                   "description": "the dense vectors are always L2-normalised: false is refused (422)"},
        dimensions={"type": ["integer", "null"], "minimum": 1, "maximum": DENSE_DIM, "default": None,
                    "description": "the dense vector's first n components, L2-normalised again; "
                                   "bge-m3 was not trained for shortened vectors"})
    response = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    return _post("Dense vectors (TEI)", "One L2-normalised vector per input, the dense_embedding of "
                 "/v1/embeddings. Also served at POST /.", request, response)


def embed_sparse_path(settings: Settings) -> Schema:
    value = {"type": "object", "required": ["index", "value"], "properties": {
        "index": {"type": "integer", "minimum": 0}, "value": {"type": "number"}}}
    response = {"type": "array", "items": {"type": "array", "items": value}}
    return _post("Sparse vectors (TEI)", "BGE-M3's lexical weights by token id, the sparse_embedding of "
                 "/v1/embeddings, ordered by index.", _embed_request(settings), response)


def embed_all_path(settings: Settings) -> Schema:
    response = {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}
    return _post("Per-token vectors (TEI): the ColBERT vectors", "For each input, its ColBERT vectors (the "
                 "colbert_embedding of /v1/embeddings): one L2-normalised row per token but the first (<s>).",
                 _embed_request(settings), response)


def rerank_path(settings: Settings) -> Schema:
    ranked_by, raw_scores = _rerank_words(settings)
    request = {"type": "object", "required": ["query", "texts"], "properties": {
        "query": _TEXT,
        "texts": {"type": "array", "minItems": 1, "maxItems": settings.max_inputs, "items": _TEXT},
        **_truncation(),
        "raw_scores": {"type": "boolean", "default": False, "description": raw_scores},
        "return_text": {"type": "boolean", "default": False}}}
    rank = {"type": "object", "required": ["index", "score"], "properties": {
        "index": {"type": "integer", "minimum": 0}, "score": {"type": "number"}, "text": {"type": "string"}}}
    return _post("Rerank texts for a query (TEI)", ranked_by, request, {"type": "array", "items": rank})


def _rerank_words(settings: Settings) -> tuple[str, str]:
    """What ranks /rerank here, and what raw_scores does to it."""
    if settings.reranker_path is None:
        return ("Best first, with the colbert+sparse+dense scores of /v1/rerank.",
                "accepted; the scores are those of /v1/rerank either way")
    return (f"Best first, by the cross-encoder {settings.reranker_name}.",
            "true: the cross-encoder's logits; false: their sigmoid, in 0..1")


def tokenize_request(settings: Settings) -> Schema:
    return {"type": "object", "required": ["inputs"], "not": {"required": ["input"]}, "properties": {
        "inputs": _inputs(settings),
        "add_special_tokens": {"type": "boolean", "default": True},
        "prompt_name": _no_prompt()}}


def tokenize_response() -> Schema:
    offset = {"type": ["integer", "null"], "minimum": 0}
    token = {"type": "object", "required": ["id", "text", "special", "start", "stop"], "properties": {
        "id": {"type": "integer", "minimum": 0}, "text": {"type": "string"}, "special": {"type": "boolean"},
        "start": offset, "stop": offset}}
    return {"type": "array", "items": {"type": "array", "items": token},
            "description": "start and stop: character offsets into the input; null for a special token"}


def decode_path(settings: Settings) -> Schema:
    ids = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}}
    request = {"type": "object", "required": ["ids"], "properties": {
        "ids": {"oneOf": [ids, {"type": "array", "minItems": 1, "maxItems": settings.max_inputs, "items": ids}]},
        "skip_special_tokens": {"type": "boolean", "default": True}}}
    return _post("Decode token ids (TEI)", "One text per list of ids; ids the vocabulary lacks are left out.",
                 request, {"type": "array", "items": {"type": "string"}})


def info_path() -> Schema:
    integer = {"type": "integer", "minimum": 0}
    nullable = {"type": ["string", "null"]}
    info = {"type": "object", "required": [
        "model_id", "model_dtype", "served_model_name", "model_type", "max_concurrent_requests", "max_input_length",
        "max_batch_tokens", "max_client_batch_size", "auto_truncate", "tokenization_workers", "version"],
        "properties": {
            "model_id": {"type": "string"}, "model_sha": nullable, "model_dtype": {"type": "string"},
            "served_model_name": {"type": "string"},
            "model_type": {"type": "object", "required": ["embedding"], "properties": {"embedding": {
                "type": "object", "required": ["pooling"], "properties": {"pooling": {"type": "string"}}}}},
            "max_concurrent_requests": integer, "max_input_length": integer, "max_batch_tokens": integer,
            "max_batch_requests": {"type": ["integer", "null"], "minimum": 0}, "max_client_batch_size": integer,
            "auto_truncate": {"type": "boolean"}, "tokenization_workers": integer, "version": {"type": "string"},
            "sha": nullable, "docker_label": nullable,
            "reranker": {"type": "object", "description": "not in TEI, and only where one is served: the "
                         "cross-encoder beside the embedding model (model_id, model_type, model_dtype, "
                         "max_input_length)"}}}
    return {"get": {
        "tags": ["Text Embeddings Inference"],
        "summary": "The served model and the batching limits (TEI's Info)",
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": info}}},
                      "401": _TEI_ERROR},
    }}


def with_tei_tokenize(path: Schema, settings: Settings) -> Schema:
    """``/tokenize`` answers both bodies: this server's own (``input``) and TEI's (``inputs``)."""
    op = path["post"]
    ours = op["requestBody"]["content"]["application/json"]["schema"]
    answer = op["responses"]["200"]["content"]["application/json"]["schema"]
    error = {"description": "An error: in TEI's shape for a TEI body (once it has been read), else this "
                            "server's", "content": {"application/json": {"schema": {"anyOf": [
                                {"$ref": "#/components/schemas/Error"}, {"$ref": "#/components/schemas/TEIError"}]}}}}
    responses = {status: error for status in op["responses"] if status != "200"}
    responses.update({str(status): error for status in (422, 429, 424)})
    return {"post": {
        **op,
        "description": f"{op['description']} A body with inputs instead of input is TEI's /tokenize: its tokens "
                       "with their character offsets, uncut.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "oneOf": [ours, tokenize_request(settings)]}}}},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
            "oneOf": [answer, tokenize_response()]}}}}, **responses},
    }}


def tei_paths(settings: Settings) -> dict[str, Schema]:
    """Every TEI path but ``/tokenize`` (``with_tei_tokenize``); ``/`` holds only its POST."""
    embed = embed_path(settings)
    return {"/embed": embed, "/": embed, "/embed_sparse": embed_sparse_path(settings),
            "/embed_all": embed_all_path(settings), "/rerank": rerank_path(settings), "/decode": decode_path(settings),
            "/info": info_path()}
