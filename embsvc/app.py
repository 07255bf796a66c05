"""``create_app``: the one place that wires routes and is handed the dependencies."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

import falcon

from embsvc import errors
from embsvc.api import head, info, metrics, tei
from embsvc.api.auth import BearerAuth
from embsvc.api.body_drain import DrainUnreadBody
from embsvc.api.cors import VaryOrigin
from embsvc.api.docs import Docs, DocsAsset
from embsvc.api.embeddings import parse_embedding_request
from embsvc.api.json_post import JsonPost
from embsvc.api.request_id import RequestId
from embsvc.api.scoring import parse_rerank_request, parse_score_request
from embsvc.api.server_timing import ServerTiming
from embsvc.api.tokenize import Tokenize
from embsvc.config import Settings
from embsvc.core.backend import Backend
from embsvc.core.embedding import EmbeddingRequest, EmbeddingService
from embsvc.core.scoring import CrossEncoder, LazyPairTokenizer, ScoreService
from embsvc.core.tei import TEIService
from embsvc.core.tokenize import TokenizeService
from embsvc.core.tokenizer import LazyTokenizer
from embsvc.openapi import build_openapi
from gpu_pool import EngineState, Kind

if TYPE_CHECKING:
    import falcon.asgi

App = falcon.App[falcon.Request, falcon.Response]


def create_app(settings: Settings, backend: Backend,
               metrics_dir: Path | None = None) -> falcon.App[falcon.Request, falcon.Response]:
    """``metrics_dir``: the folder shared by all gunicorn workers' metrics (None: this process only)."""
    recorded, registry = metrics.build(backend, metrics_dir, info.served(settings))
    # The request id comes first so that even a refused request is answered and logged with it;
    # the error shape is settled before authentication can refuse a request.
    # Annotated: from it mypy learns the request and response types the middleware must take.
    # The body drain comes first, so that its process_response runs last, after any refusal.
    app: App = head.App(middleware=[DrainUnreadBody(settings.max_request_bytes), RequestId(), ServerTiming(),
                                    *_cors(settings), metrics.MetricsMiddleware(recorded),
                                    errors.ErrorShape(), BearerAuth(settings.api_tokens)])
    app.req_options.strip_url_path_trailing_slash = True
    tokenizer = LazyTokenizer(settings.model_path, lambda: EngineState.READY in backend.states())
    scores = ScoreService(settings.model_name, backend, tokenizer, _cross_encoder(settings, backend))
    embeddings = EmbeddingService(settings.model_name, backend, tokenizer)
    tokens = TokenizeService(settings.model_name, tokenizer, settings.max_tokens)
    tei_service = TEIService(embeddings, scores, tokens)
    routes = _Routes(app)
    route = routes.add
    route("/v1/embeddings", JsonPost(settings, parse_embedding_request, embeddings.embed), "embeddings")
    route("/v1/score", JsonPost(settings, parse_score_request, scores.score), "score")
    rerank = JsonPost(settings, parse_rerank_request, scores.rerank)
    route("/v1/rerank", rerank, "rerank")
    route("/v2/rerank", rerank, "rerank_v2")  # where Cohere's v2 clients (LangChain's) send it
    route("/tokenize", Tokenize(settings, tokens, tei_service), "tokenize")
    _add_tei_routes(routes, settings, backend, tei_service, info.Root(settings, routes.endpoints))
    route("/health", info.Health(settings, backend), "health")
    route("/health/detailed", info.HealthDetailed(settings, backend), "health_detailed")
    route("/docs", Docs(settings.model_name), "docs")
    route("/docs/{name}", DocsAsset())
    route("/stats", info.Stats(settings, backend), "stats")
    route("/v1/models", info.Models(settings), "models")
    route("/v1/models/{model_id:path}", info.Model(settings), "model")
    route("/metrics", metrics.MetricsResource(registry), "metrics")
    route("/openapi.json", info.OpenAPI(build_openapi(settings)), "openapi")
    errors.register(app)
    return app


def _cross_encoder(settings: Settings, backend: Backend) -> CrossEncoder | None:
    if settings.reranker_path is None:
        return None
    tokenizer = LazyPairTokenizer(settings.reranker_path, lambda: EngineState.READY in backend.states())
    return CrossEncoder(settings.reranker_name, backend, tokenizer)


def _cors(settings: Settings) -> list[falcon.CORSMiddleware[falcon.asgi.Request, falcon.asgi.Response] | VaryOrigin]:
    """Browser clients of ALLOWED_ORIGINS: a browser lets a page read an answer (an error
    too) only with these headers; preflights (OPTIONS) get theirs here."""
    if not settings.allowed_origins:
        return []
    origins = "*" if settings.allowed_origins == ("*",) else settings.allowed_origins
    # (falcon types the middleware by its ASGI side; its WSGI side serves this WSGI app.)
    vary = [] if origins == "*" else [VaryOrigin()]
    exposed = ["X-Request-ID", "Retry-After", "Server-Timing"]
    return [falcon.CORSMiddleware(allow_origins=origins, expose_headers=exposed), *vary]


class _Routes:
    """Adds the app's routes, and lists the named ones for ``GET /`` with the methods their
    resources answer (a path's field converter left out: ``{model_id}``)."""

    _CONVERTER = re.compile(r"\{(\w+):\w+\}")

    def __init__(self, app: App) -> None:
        self.app = app
        self.endpoints: dict[str, str] = {}

    def add(self, path: str, resource: object, name: str | None = None) -> None:
        self.app.add_route(path, resource)
        if name is not None:
            methods = ",".join(m for m in ("GET", "POST") if hasattr(resource, f"on_{m.lower()}"))
            shown = self._CONVERTER.sub(r"{\1}", path)
            self.endpoints[name] = f"{methods} {shown}"


def _add_tei_routes(routes: _Routes, settings: Settings, backend: Backend, service: TEIService,
                    root: info.Root) -> None:
    """Text-embeddings-inference's API (TEI's /tokenize shares this server's route)."""
    route = routes.add

    def embed(kind: Kind) -> JsonPost[EmbeddingRequest]:
        return JsonPost(settings, functools.partial(tei.parse_embed, kind=kind), service.embed, tei_shape=True)

    route("/embed", embed(Kind.DENSE), "tei_embed")
    route("/", tei.EmbedAtRoot(root, embed(Kind.DENSE)))  # GET: this server's own information
    route("/embed_sparse", embed(Kind.SPARSE), "tei_embed_sparse")
    route("/embed_all", embed(Kind.COLBERT), "tei_embed_all")
    route("/rerank", JsonPost(settings, tei.parse_rerank, service.rerank, tei_shape=True), "tei_rerank")
    route("/decode", JsonPost(settings, tei.parse_decode, lambda ids: service.decode(*ids), tei_shape=True),
          "tei_decode")
    route("/info", tei.Info(settings, backend), "tei_info")
