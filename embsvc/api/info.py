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
from gpu_pool import EngineSnapshot, EngineState, batching_stats, lane_stats

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
            "reranker": _reranker_health(s, ready, engine),
            "engines": [state.name.lower() for state in states],
            "shared_memory": self.backend.shared_memory(),
            "batching": {"enabled": True, "batch_size": s.batch_size, "timeout_ms": s.batch_timeout_ms,
                         "max_queue_size": s.max_queue_size, "max_batch_tokens": s.batch_tokens(),
                         "stats": batching_stats(self.backend.snapshot())},
        })


def _reranker_health(s: Settings, ready: bool, engine: dict[str, object]) -> dict[str, object] | None:
    """The cross-encoder's state as ``model``'s, or None where none is served."""
    if s.reranker_path is None:
        return None
    loaded = ready and isinstance(engine.get("reranker"), dict)
    return {"name": s.reranker_name, "status": "loaded" if loaded else "not_loaded",
            "device": engine.get("device") if loaded else None, "dtype": engine.get("dtype") if loaded else None}


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
            "models": model_stats(s, engines),
            "engines": [engine.as_dict() for engine in engines],
            "shared_memory": self.backend.shared_memory(),
        })


def served(settings: Settings) -> list[tuple[str, bool]]:
    """Each served model's name, and whether it is the cross-encoder."""
    models = [(settings.model_name, False)]
    if settings.reranker_path is not None:
        models.append((settings.reranker_name, True))
    return models


def model_stats(settings: Settings, engines: list[EngineSnapshot]) -> dict[str, dict[str, float]]:
    """Per served model, all engines together: the requests it answered and its passes."""
    figures = {}
    for name, rerank in served(settings):
        each = [engine.stats.model(rerank) for engine in engines]
        batches = sum(m.batches for m in each)
        figures[name] = {
            "processed_requests": int(sum(m.requests for m in each)),
            "batches": int(batches),
            "inputs": int(sum(m.inputs for m in each)),
            "tokens_processed": int(sum(m.tokens for m in each)),
            "average_processing_time": sum(m.processing_seconds for m in each) / (batches or 1),
        }
    return figures


def _model_cards(settings: Settings) -> dict[str, dict[str, object]]:
    """The served models' cards, by each name and alias they answer to."""
    cards: dict[str, dict[str, object]] = {}
    for name, rerank in served(settings):
        aliases = settings.reranker_aliases if rerank else settings.model_aliases
        card = {"id": name, "object": "model", "created": _STARTED, "owned_by": "BAAI", "aliases": list(aliases),
                "type": "reranker" if rerank else "embedding"}
        cards.update(dict.fromkeys((name, *aliases), card))
    return cards


class Models:
    auth_required = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        cards = list({id(card): card for card in _model_cards(self.settings).values()}.values())
        _json(resp, {"object": "list", "data": cards})


class Model:
    auth_required = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_get(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        card = _model_cards(self.settings).get(model_id)
        if card is None:
            raise NotFound(f"Model {model_id} not found", param="model")  # the original service's words
        _json(resp, card)


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
            "reranker": s.reranker_name if s.reranker_path is not None else None,
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
