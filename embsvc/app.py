"""``create_app``: the one place that wires routes and is handed the dependencies."""

from __future__ import annotations

from pathlib import Path

import falcon

from embsvc import errors, metrics, resources, score_resources
from embsvc.auth import BearerAuth
from embsvc.config import Settings
from embsvc.openapi import build_openapi
from embsvc.request_id import RequestId
from embsvc.score_service import ScoreService
from embsvc.service import EmbeddingService, Engine
from embsvc.tokenize_endpoint import Tokenize


def create_app(settings: Settings, engine: Engine, metrics_dir: Path | None = None) -> falcon.App:
    """``metrics_dir``: the folder shared by all gunicorn workers' metrics (None: this process only)."""
    service = EmbeddingService(settings, engine)
    recorded, registry = metrics.build(engine, metrics_dir)
    # The request id comes first so that even a refused request is answered and logged with it.
    app = falcon.App(middleware=[RequestId(), metrics.MetricsMiddleware(recorded), BearerAuth(settings.api_tokens)])
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/v1/embeddings", resources.Embeddings(service))
    _add_scoring_routes(app, service)
    app.add_route("/health", resources.Health(service))
    app.add_route("/stats", resources.Stats(service))
    app.add_route("/v1/models", resources.Models(settings))
    app.add_route("/v1/models/{model_id:path}", resources.Model(settings))
    app.add_route("/", resources.Root(settings))
    app.add_route("/metrics", metrics.MetricsResource(registry))
    app.add_route("/openapi.json", resources.OpenAPI(build_openapi(settings)))
    errors.register(app)
    return app


def _add_scoring_routes(app: falcon.App, service: EmbeddingService) -> None:
    """Hybrid scores, reranking and tokenizing (README: Beyond embeddings)."""
    scores = ScoreService(service)
    app.add_route("/v1/score", score_resources.Score(scores))
    app.add_route("/v1/rerank", score_resources.Rerank(scores))
    app.add_route("/v2/rerank", score_resources.Rerank(scores))  # where Cohere's v2 clients (LangChain's) send it
    app.add_route("/tokenize", Tokenize(service))
