"""``create_app``: the one place that wires routes and is handed the dependencies."""

from __future__ import annotations

from pathlib import Path

import falcon

from embsvc import errors
from embsvc.api import info, metrics
from embsvc.api.auth import BearerAuth
from embsvc.api.embeddings import Embeddings
from embsvc.api.request_id import RequestId
from embsvc.api.scoring import Rerank, Score
from embsvc.api.tokenize import Tokenize
from embsvc.config import Settings
from embsvc.core.backend import Backend
from embsvc.core.embedding import EmbeddingService
from embsvc.core.scoring import ScoreService
from embsvc.core.tokenize import TokenizeService
from embsvc.core.tokenizer import LazyTokenizer
from embsvc.openapi import build_openapi
from gpu_pool import EngineState


def create_app(settings: Settings, backend: Backend,
               metrics_dir: Path | None = None) -> falcon.App[falcon.Request, falcon.Response]:
    """``metrics_dir``: the folder shared by all gunicorn workers' metrics (None: this process only)."""
    recorded, registry = metrics.build(backend, metrics_dir)
    # The request id comes first so that even a refused request is answered and logged with it.
    # Annotated: from it mypy learns the request and response types the middleware must take.
    app: falcon.App[falcon.Request, falcon.Response] = falcon.App(
        middleware=[RequestId(), metrics.MetricsMiddleware(recorded), BearerAuth(settings.api_tokens)])
    app.req_options.strip_url_path_trailing_slash = True
    tokenizer = LazyTokenizer(settings.model_path, lambda: EngineState.READY in backend.states())
    scores = ScoreService(settings.model_name, backend, tokenizer)
    app.add_route("/v1/embeddings", Embeddings(settings, EmbeddingService(settings.model_name, backend, tokenizer)))
    app.add_route("/v1/score", Score(settings, scores))
    app.add_route("/v1/rerank", Rerank(settings, scores))
    app.add_route("/v2/rerank", Rerank(settings, scores))  # where Cohere's v2 clients (LangChain's) send it
    app.add_route("/tokenize", Tokenize(settings, TokenizeService(settings.model_name, tokenizer)))
    app.add_route("/health", info.Health(settings, backend))
    app.add_route("/stats", info.Stats(settings, backend))
    app.add_route("/v1/models", info.Models(settings))
    app.add_route("/v1/models/{model_id:path}", info.Model(settings))
    app.add_route("/", info.Root(settings))
    app.add_route("/metrics", metrics.MetricsResource(registry))
    app.add_route("/openapi.json", info.OpenAPI(build_openapi(settings)))
    errors.register(app)
    return app
