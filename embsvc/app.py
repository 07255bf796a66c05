"""``create_app``: the one place that wires routes and is handed the dependencies."""

from __future__ import annotations

import falcon

from embsvc import errors, resources
from embsvc.auth import BearerAuth
from embsvc.config import Settings
from embsvc.openapi import build_openapi
from embsvc.service import EmbeddingService, Engine


def create_app(settings: Settings, engine: Engine) -> falcon.App:
    service = EmbeddingService(settings, engine)
    app = falcon.App(middleware=[BearerAuth(settings.api_tokens)])
    app.req_options.strip_url_path_trailing_slash = True
    app.add_route("/v1/embeddings", resources.Embeddings(service))
    app.add_route("/health", resources.Health(service))
    app.add_route("/stats", resources.Stats(service))
    app.add_route("/v1/models", resources.Models(settings))
    app.add_route("/v1/models/{model_id:path}", resources.Model(settings))
    app.add_route("/", resources.Root(settings))
    app.add_route("/openapi.json", resources.OpenAPI(build_openapi(settings)))
    errors.register(app)
    return app
