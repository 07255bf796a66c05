"""Reading the bodies of ``POST /v1/score`` and ``POST /v1/rerank`` (also at ``/v2/rerank``,
where Cohere's v2 clients send it); the endpoints are ``json_post.JsonPost``s.

Rerank bodies come in the shapes that Cohere- and Jina-style clients send:
documents as strings or ``{"text": …}`` objects, ``top_n``, ``return_documents``,
Cohere v2's ``max_tokens_per_doc``, and ``null`` for an option left at its default.
Their ``model`` chooses what ranks: the cross-encoder by its names, bge-m3's scores by
bge-m3's names or when the body names none (as before a cross-encoder was served).
"""

from __future__ import annotations

import math
from typing import Any

from embsvc.api.body import boolean, check_model, max_length, model_field, optional_str
from embsvc.config import Settings
from embsvc.core.scoring import DEFAULT_MODE, DEFAULT_WEIGHTS, RerankRequest, ScoreRequest
from embsvc.errors import InvalidRequest, NotFound, PayloadTooLarge
from gpu_pool import DEFAULT_OPTIONS, SCORE_MODES, JobOptions


def parse_score_request(body: dict[str, Any], settings: Settings,
                        options: JobOptions = DEFAULT_OPTIONS) -> ScoreRequest:
    check_model(body, settings)
    optional_str(body, "user")
    return ScoreRequest(
        query=query(body),
        documents=documents(body, settings.max_inputs),
        weights=weights(body),
        max_length=max_length(body, settings.max_tokens),
        truncate=boolean(body, "truncate", True),
        options=options,
    )


def parse_rerank_request(body: dict[str, Any], settings: Settings,
                         options: JobOptions = DEFAULT_OPTIONS) -> RerankRequest:
    body = {key: value for key, value in body.items() if value is not None}
    if "max_tokens_per_doc" in body:  # checked also when max_length, which wins, is there
        per_doc = max_length(body, settings.max_tokens, "max_tokens_per_doc")
        body.setdefault("max_length", per_doc)  # Cohere v2's name; here it bounds the query too
    if wants_cross_encoder(body, settings):
        return _cross_encoder_rerank(body, settings, options)
    scoring = parse_score_request(body, settings, options)
    mode = body.get("mode", DEFAULT_MODE)
    if mode not in SCORE_MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(SCORE_MODES)}", param="mode")
    return RerankRequest(
        scoring=scoring,
        mode=mode,
        top_n=min(top_n(body, len(scoring.documents)), len(scoring.documents)),
        return_documents=boolean(body, "return_documents", False),
    )


def wants_cross_encoder(body: dict[str, Any], settings: Settings) -> bool:
    """Whether ``model`` names the cross-encoder; naming it where none is served is a 404 that
    says what is served (another unknown name is left to ``check_model``)."""
    model = model_field(body, settings)
    if model not in settings.reranker_names():
        return False
    if settings.reranker_path is None:
        raise NotFound(f"model {model!r} is not served here: this server has no cross-encoder (RERANKER_PATH=none); "
                       f"it serves {settings.model_name!r}, whose scores rank when model is {settings.model_name!r}",
                       param="model")
    return True


def _cross_encoder_rerank(body: dict[str, Any], settings: Settings, options: JobOptions) -> RerankRequest:
    for field in ("mode", "weights"):
        if field in body:
            raise InvalidRequest(f"{field} chooses among bge-m3's scores; {settings.reranker_name} ranks by its own "
                                 f"score: leave {field} out, or name {settings.model_name!r} as model", param=field)
    optional_str(body, "user")
    text = query(body)  # checked before the documents, as for bge-m3
    docs = documents(body, settings.max_inputs)
    scoring = ScoreRequest(
        query=text, documents=docs, weights=DEFAULT_WEIGHTS,
        max_length=max_length(body, settings.max_tokens), truncate=boolean(body, "truncate", True),
        options=options)
    return RerankRequest(
        scoring=scoring, mode=DEFAULT_MODE, top_n=min(top_n(body, len(docs)), len(docs)),
        return_documents=boolean(body, "return_documents", False), cross_encoder=True)


def query(body: dict[str, Any]) -> str:
    value = body.get("query")
    if not isinstance(value, str):
        raise InvalidRequest("query is required: a string", param="query")
    if not value.strip():
        raise InvalidRequest("query is empty or white space only", param="query")
    return value


def documents(body: dict[str, Any], max_inputs: int) -> list[str]:
    value = body.get("documents")
    if not isinstance(value, list):
        raise InvalidRequest("documents is required: a list of strings or of {\"text\": string} objects",
                             param="documents")
    if not value:
        raise InvalidRequest("documents must not be an empty list", param="documents")
    if len(value) > max_inputs:
        raise PayloadTooLarge(f"documents has {len(value)} items; at most {max_inputs} are allowed",
                              param="documents")
    return [_document_text(item, i) for i, item in enumerate(value)]


def _document_text(item: object, i: int) -> str:
    text = item.get("text") if isinstance(item, dict) else item
    if not isinstance(text, str):
        raise InvalidRequest(f"documents[{i}] must be a string or an object with a string \"text\"",
                             param="documents")
    if not text.strip():
        raise InvalidRequest(f"documents[{i}] is empty or white space only", param="documents")
    return text


def weights(body: dict[str, Any]) -> tuple[float, float, float]:
    value = body.get("weights", list(DEFAULT_WEIGHTS))
    numbers = isinstance(value, list) and all(_is_number(w) for w in value)
    if not numbers or len(value) != 3:
        raise InvalidRequest("weights must be a list of three numbers: [dense, sparse, colbert]", param="weights")
    if any(w < 0 for w in value):
        raise InvalidRequest("weights must not be negative", param="weights")
    if value[0] + value[1] <= 0:
        # Both mixed modes are weighted means: sparse+dense divides by w_dense + w_sparse.
        raise InvalidRequest("the dense and sparse weights must not both be 0", param="weights")
    return float(value[0]), float(value[1]), float(value[2])


def top_n(body: dict[str, Any], default: int) -> int:
    value = body.get("top_n", default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequest("top_n must be a whole number of at least 1", param="top_n")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
