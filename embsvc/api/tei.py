"""Text-embeddings-inference's HTTP API (TEI): ``POST /embed`` (also ``POST /``),
``/embed_sparse``, ``/embed_all``, ``/rerank``, ``/decode``, ``GET /info``, and TEI's bodies
of ``POST /tokenize`` (api/tokenize.py tells them apart).

The fields and answers are those of TEI's OpenAPI document; what this model cannot honour
(a prompt, un-normalised or shortened dense vectors, token ids as input) is refused with a
422 that says why. Errors are in TEI's shape (``tei_shape``; embsvc/errors.py maps them).
"""

from __future__ import annotations

from typing import Any

import falcon

from embsvc import __version__
from embsvc.api.body import TEI_WORDS, boolean, dimensions, texts
from embsvc.api.info import Root
from embsvc.api.json_post import JsonPost
from embsvc.config import Settings
from embsvc.core import rerank_pairs
from embsvc.core.backend import Backend
from embsvc.core.embedding import EmbeddingRequest
from embsvc.core.scoring import DEFAULT_MODE, DEFAULT_WEIGHTS, RerankRequest, ScoreRequest
from embsvc.core.serialize import dumps
from embsvc.errors import EmptyInput, InvalidRequest, PayloadTooLarge
from gpu_pool import DEFAULT_OPTIONS, JobOptions, Kind

# TEI accepts both spellings (serde aliases in its types.rs).
_DIRECTIONS = {"right": "right", "Right": "right", "left": "left", "Left": "left"}
_MAX_ID = 2**32 - 1  # TEI's ids are u32


def _truncation(body: dict[str, Any]) -> tuple[bool, str]:
    truncate = body.get("truncate")
    if truncate is None:
        truncate = True  # TEI's default is its auto_truncate, which /info reports as true
    if not isinstance(truncate, bool):
        raise InvalidRequest("truncate must be true, false or null", param="truncate")
    direction = body.get("truncation_direction", "right")
    if not isinstance(direction, str) or direction not in _DIRECTIONS:  # a list or object is unhashable
        raise InvalidRequest('truncation_direction must be "left" or "right"', param="truncation_direction")
    return truncate, _DIRECTIONS[direction]


def _no_prompt(body: dict[str, Any], settings: Settings) -> None:
    name = body.get("prompt_name")
    if name is not None:
        raise InvalidRequest(f"prompt_name is not served: {settings.model_name} has no prompts; "
                             "send the text as it should be embedded", param="prompt_name")


def _dense_options(body: dict[str, Any]) -> int | None:
    """TEI's ``normalize`` and ``dimensions``: BGE-M3's dense vector is the normalised CLS vector;
    ``dimensions`` keeps its first n components, normalised again (as on /v1/embeddings)."""
    normalize = body.get("normalize", True)
    if not isinstance(normalize, bool):
        raise InvalidRequest("normalize must be true or false", param="normalize")
    if not normalize:
        raise InvalidRequest("normalize false is not served: BGE-M3's dense vectors are L2-normalised by the "
                             "model (as FlagEmbedding returns them); send normalize true or leave it out",
                             param="normalize")
    return dimensions(body)


def parse_embed(body: dict[str, Any], settings: Settings,
                options: JobOptions = DEFAULT_OPTIONS, *, kind: Kind) -> EmbeddingRequest:
    """``kind``: dense for /embed, sparse for /embed_sparse, ColBERT for /embed_all."""
    _no_prompt(body, settings)
    shortened = _dense_options(body) if kind == Kind.DENSE else None
    truncate, direction = _truncation(body)
    return EmbeddingRequest(texts=texts(body, "inputs", settings.max_inputs, TEI_WORDS), kinds=kind,
                            encoding_format="float", max_length=settings.max_tokens, truncate=truncate,
                            truncation_direction=direction, field="inputs", options=options, dimensions=shortened,
                            chunk_long_inputs=boolean(body, "chunk_long_inputs", settings.chunk_long_inputs),
                            max_request_tokens=settings.max_request_tokens)


def parse_rerank(body: dict[str, Any], settings: Settings, options: JobOptions = DEFAULT_OPTIONS) -> RerankRequest:
    query = body.get("query")
    if not isinstance(query, str):
        raise InvalidRequest("query is required: a string", param="query")
    if not query.strip():
        raise EmptyInput("`query` cannot be empty or white space only", param="query")
    if not isinstance(body.get("texts"), list):
        raise InvalidRequest("texts is required: a list of strings", param="texts")
    documents = texts(body, "texts", settings.max_inputs, TEI_WORDS)
    # TEI's scores go through a sigmoid unless raw_scores; bge-m3's hybrid scores never do (docs/api.md).
    raw_scores = boolean(body, "raw_scores", False)
    truncate, direction = _truncation(body)
    cross_encoder = settings.reranker_path is not None  # TEI serves one model a server: the reranker ranks
    scoring = ScoreRequest(query, documents, DEFAULT_WEIGHTS, settings.max_tokens, truncate, direction, "texts",
                           options)
    return RerankRequest(scoring, DEFAULT_MODE, len(documents), boolean(body, "return_text", False),
                         cross_encoder=cross_encoder, raw_scores=raw_scores)


def is_tei_tokenize(body: dict[str, Any]) -> bool:
    """TEI's /tokenize body names ``inputs``; this server's own names ``input`` (which wins)."""
    return "inputs" in body and "input" not in body


def parse_tokenize(body: dict[str, Any], settings: Settings) -> tuple[list[str], bool]:
    _no_prompt(body, settings)
    return texts(body, "inputs", settings.max_inputs, TEI_WORDS), boolean(body, "add_special_tokens", True)


def _ids(row: list[Any], where: str) -> list[int]:
    if not row:
        raise EmptyInput("`input_ids` cannot be empty", param="ids")
    # JSON has one number type: 5.0 is the integer 5.
    ids = [int(v) if isinstance(v, float) and v.is_integer() else v for v in row]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_ID for v in ids):
        raise InvalidRequest(f"{where} must hold token ids: whole numbers from 0 to {_MAX_ID}", param="ids")
    return ids


def parse_decode(body: dict[str, Any], settings: Settings,
                 options: JobOptions = DEFAULT_OPTIONS) -> tuple[list[list[int]], bool]:
    """The ids to decode, and ``skip_special_tokens``; no model is involved (``options`` go unused)."""
    value = body.get("ids")
    if not isinstance(value, list):
        raise InvalidRequest("ids is required: a list of token ids, or a list of such lists", param="ids")
    if not value:
        raise EmptyInput("`ids` cannot be empty", param="ids")
    batch = all(isinstance(row, list) for row in value)
    rows: list[list[Any]] = value if batch else [value]
    if len(rows) > settings.max_inputs:
        raise PayloadTooLarge(TEI_WORDS.too_many.format(count=len(rows), limit=settings.max_inputs), param="ids")
    ids = [_ids(row, f"ids[{i}]" if batch else "ids") for i, row in enumerate(rows)]
    return ids, boolean(body, "skip_special_tokens", True)


class EmbedAtRoot:
    """``GET /`` stays the service information; ``POST /`` is TEI's ``/embed``, as TEI routes
    it for an embedding model (huggingface_hub's ``feature_extraction`` posts to the base URL)."""

    auth_required = frozenset({"POST"})
    tei_shape = frozenset({"POST"})

    def __init__(self, root: Root, embed: JsonPost[EmbeddingRequest]) -> None:
        self.root, self.embed = root, embed

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.root.on_get(req, resp)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.embed.on_post(req, resp)


class Info:
    """``GET /info``: TEI's Info, from the settings and a ready engine."""

    auth_required = True
    tei_shape = True

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings, self.backend = settings, backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps(tei_info(self.settings, self.backend))


def tei_info(s: Settings, backend: Backend) -> dict[str, object]:
    engines = len(backend.states())
    info: dict[str, object] = {
        "model_id": s.model_name, "model_sha": None,
        "model_dtype": backend.info().get("dtype") or s.dtype,  # "auto" until an engine has chosen
        "served_model_name": s.model_name,
        "model_type": {"embedding": {"pooling": "cls"}},
        "max_concurrent_requests": s.max_queue_size * engines,  # each engine queues MAX_QUEUE_SIZE
        "max_input_length": s.max_tokens,
        "max_batch_tokens": s.batch_tokens(),
        "max_batch_requests": s.batch_size,
        "max_client_batch_size": s.max_inputs,
        "auto_truncate": True,
        "tokenization_workers": s.web_concurrency,  # every web worker tokenizes its own requests
        "version": __version__, "sha": None, "docker_label": None,
    }
    if s.reranker_path is not None:  # not in TEI, which serves one model a server
        info["reranker"] = _reranker_info(s, backend)
    return info


def _reranker_info(s: Settings, backend: Backend) -> dict[str, object]:
    """The cross-encoder served beside bge-m3 as TEI describes a reranker (its ``model_type``), with
    the dtype a ready engine runs it in."""
    loaded = backend.info().get("reranker")
    engine = loaded if isinstance(loaded, dict) else {}
    return {"model_id": s.reranker_name, "served_model_name": s.reranker_name,
            "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
            "model_dtype": engine.get("dtype") or backend.info().get("dtype") or s.dtype,
            "max_input_length": min(s.max_tokens, rerank_pairs.DEFAULT_MAX_LENGTH)}  # a pair's, as FlagReranker's
