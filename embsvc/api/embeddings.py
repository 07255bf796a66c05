"""``POST /v1/embeddings``: reading its body (the endpoint is a ``json_post.JsonPost``)."""

from __future__ import annotations

from typing import Any, cast

from embsvc.api.body import boolean, check_model, dimensions, max_length, optional_str, texts
from embsvc.config import Settings
from embsvc.core.embedding import EmbeddingRequest
from embsvc.errors import InvalidRequest
from gpu_pool import DEFAULT_OPTIONS, JobOptions, Kind

_KIND_FLAGS = {"dense": Kind.DENSE, "sparse": Kind.SPARSE, "colbert": Kind.COLBERT}


def parse_embedding_request(body: dict[str, Any], settings: Settings,
                            options: JobOptions = DEFAULT_OPTIONS) -> EmbeddingRequest:
    check_model(body, settings)
    optional_str(body, "user")
    kinds = Kind(0)
    for name, flag in _KIND_FLAGS.items():
        if boolean(body, f"return_{name}", name in settings.default_return):
            kinds |= flag
    if not kinds:
        # The original service's words.
        raise InvalidRequest("At least one vector type must be requested. "
                             "Set return_dense=true, return_sparse=true, or return_colbert=true.")
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        raise InvalidRequest("encoding_format must be \"float\" or \"base64\"", param="encoding_format")
    return EmbeddingRequest(
        texts=texts(body, "input", settings.max_inputs),
        kinds=kinds,
        encoding_format=encoding_format,
        max_length=max_length(body, settings.max_tokens),
        truncate=boolean(body, "truncate", True),
        embedding_dtype=embedding_dtype(body, encoding_format),
        sparse_tokens=sparse_tokens(body, kinds),
        options=options,
        dimensions=dimensions(body),
        chunk_long_inputs=boolean(body, "chunk_long_inputs", settings.chunk_long_inputs),
        max_request_tokens=settings.max_request_tokens,
    )


def embedding_dtype(body: dict[str, Any], encoding_format: str) -> str:
    value = body.get("embedding_dtype", "float32")
    if value not in ("float32", "float16"):
        raise InvalidRequest("embedding_dtype must be \"float32\" or \"float16\"", param="embedding_dtype")
    if value == "float16" and encoding_format != "base64":
        # JSON numbers carry no width: float16 only shrinks base64 payloads.
        raise InvalidRequest("embedding_dtype \"float16\" needs encoding_format \"base64\"", param="embedding_dtype")
    return cast(str, value)  # one of the two names checked above


def sparse_tokens(body: dict[str, Any], kinds: Kind) -> bool:
    wanted = boolean(body, "return_sparse_tokens", False)
    if wanted and not kinds & Kind.SPARSE:
        raise InvalidRequest("return_sparse_tokens needs return_sparse", param="return_sparse_tokens")
    return wanted
