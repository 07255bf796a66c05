"""What the server tells about itself: ``/``, ``/health``, ``/health/detailed``, ``/stats``,
``/v1/models``, ``/openapi.json``."""

from __future__ import annotations

import time
from typing import Any

import falcon

from embsvc import __version__
from embsvc.config import Settings
from embsvc.core.backend import Backend
from embsvc.core.serialize import dumps
from embsvc.errors import NotFound
from gpu_pool import EngineState, batching_stats, lane_stats

_STARTED = int(time.time())


def _json(resp: falcon.Response, payload: object, status: int = 200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = dumps(payload)


class Health:
    auth_required = False

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings, self.backend = settings, backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        states = self.backend.states()
        if EngineState.READY in states:
            # Status and model only: where it runs and its shared memory are for callers
            # with a token (/health/detailed, /stats), not for whoever reaches the port.
            _json(resp, {"status": "ok", "model": self.settings.model_name})
        else:
            status = "loading" if EngineState.LOADING in states else "unavailable"
            _json(resp, {"status": status}, status=503)
            resp.set_header("Retry-After", "1")


class HealthDetailed:
    """``GET /health/detailed`` (Bearer): the original service's detailed health, adapted: the
    model's state and where it runs, each engine's state, and the batching figures. Always 200:
    ``status`` says ``degraded`` while no engine is ready (``/health`` is the probe)."""

    auth_required = True

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings, self.backend = settings, backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        states = self.backend.states()
        ready = EngineState.READY in states
        engine = self.backend.info()
        s = self.settings
        _json(resp, {
            "status": "ok" if ready else "degraded",
            "timestamp": time.time(),
            "model": {"name": s.model_name, "status": "loaded" if ready else "not_loaded",
                      "device": engine.get("device"), "dtype": engine.get("dtype")},
            "engines": [state.name.lower() for state in states],
            "shared_memory": self.backend.shared_memory(),
            "batching": {"enabled": True, "batch_size": s.batch_size, "timeout_ms": s.batch_timeout_ms,
                         "max_queue_size": s.max_queue_size, "max_batch_tokens": s.batch_tokens(),
                         "stats": batching_stats(self.backend.snapshot())},
        })


class Stats:
    auth_required = True

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings, self.backend = settings, backend

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        engines = self.backend.snapshot()
        s = self.settings
        _json(resp, {
            "batching": batching_stats(engines),
            "lanes": lane_stats(engines),
            "config": {
                "batch_size": s.batch_size, "timeout_ms": s.batch_timeout_ms, "max_queue_size": s.max_queue_size,
                "max_batch_tokens": s.batch_tokens(), "processing_concurrency": s.processing_concurrency,
                "max_tokens": s.max_tokens, "max_inputs": s.max_inputs, "devices": list(s.devices),
                "dtype": s.dtype, "interactive_max_tokens": s.interactive_max_tokens,
                "interactive_max_wait_ms": s.interactive_max_wait_ms, "bulk_share": s.bulk_share,
            },
            "engines": [engine.as_dict() for engine in engines],
            "shared_memory": self.backend.shared_memory(),
        })


def _model_card(settings: Settings) -> dict[str, object]:
    return {"id": settings.model_name, "object": "model", "created": _STARTED, "owned_by": "BAAI",
            "aliases": list(settings.model_aliases)}


class Models:
    auth_required = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, {"object": "list", "data": [_model_card(self.settings)]})


class Model:
    auth_required = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        if model_id not in self.settings.model_names():
            raise NotFound(f"Model {model_id} not found", param="model")  # the original service's words
        _json(resp, _model_card(self.settings))


class Root:
    auth_required = False

    def __init__(self, settings: Settings, endpoints: dict[str, str]) -> None:
        """``endpoints``: by name, the method and path of each route listed (``embsvc.app`` fills it)."""
        self.settings, self.endpoints = settings, endpoints

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        s = self.settings
        _json(resp, {
            "service": "bge-m3 embedding server",
            "version": __version__,
            "model": s.model_name,
            "supported_vectors": ["dense", "sparse", "colbert"],
            "endpoints": self.endpoints,
            "docs_url": "/docs",
            "batching": {"batch_size": s.batch_size, "timeout_ms": s.batch_timeout_ms,
                         "max_queue_size": s.max_queue_size, "max_batch_tokens": s.batch_tokens()},
        })


class OpenAPI:
    auth_required = False

    def __init__(self, document: dict[str, Any]) -> None:
        self.body = dumps(document)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.body
