"""``GET /metrics``: request metrics of every web worker, plus the engines' figures.

Under gunicorn (``multiprocess_dir`` given) each worker's request metrics go to
memory-mapped files in a folder the master made (``embsvc.master.metrics_dir``), and a
scrape adds up the files of all workers, living and dead, so the counts do not
depend on which worker answers. Without it (tests, a single process) they stay
in memory. The engine figures come from shared memory at scrape time
(``embsvc.api.engine_metrics``).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import falcon
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from embsvc.api.engine_metrics import EngineCollector
from embsvc.core.backend import Backend

# Embedding requests take from milliseconds (one short text on a GPU) to the
# two-minute timeout (long inputs queued behind others on a CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONVERTER = re.compile(r"\{(\w+):[^}]*\}")


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.requests = Counter("embsvc_http_requests", "HTTP requests answered, by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=registry)
        self.latency = Histogram("embsvc_http_request_duration_seconds",
                                 "Time from reading the request to having the answer, by endpoint and method",
                                 ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=registry)
        # livesum: a dead worker's requests are no longer in progress.
        self.in_progress = Gauge("embsvc_http_requests_in_progress", "HTTP requests being served",
                                 ["endpoint"], multiprocess_mode="livesum", registry=registry)


def endpoint_of(req: falcon.Request) -> str:
    """The route, not the path, so that every model id or unknown URL does not make a new series."""
    template = req.uri_template
    if template is None:
        return "unmatched"
    return _endpoint(template)


@functools.lru_cache(maxsize=256)  # the app's routes: a few dozen templates
def _endpoint(template: str) -> str:
    return _CONVERTER.sub(r"{\1}", template)


class MetricsMiddleware:
    def __init__(self, metrics: RequestMetrics) -> None:
        self.metrics = metrics
        # Each series' child, kept: ``labels`` checks and looks it up under a lock on every call.
        self._in_progress = functools.lru_cache(maxsize=256)(metrics.in_progress.labels)
        self._requests = functools.lru_cache(maxsize=1024)(metrics.requests.labels)
        self._latency = functools.lru_cache(maxsize=256)(metrics.latency.labels)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_started = time.perf_counter()

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         params: dict[str, Any]) -> None:
        # After routing: the endpoint is known from here on.
        req.context.metrics_endpoint = endpoint_of(req)
        self._in_progress(req.context.metrics_endpoint).inc()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        endpoint = req.context.get("metrics_endpoint")
        if endpoint is not None:
            self._in_progress(endpoint).dec()
        else:
            endpoint = endpoint_of(req)
        method = req.method if req.method in _METHODS else "other"
        self._requests(endpoint, method, str(resp.status_code)).inc()
        started = req.context.get("metrics_started")
        if started is not None:
            self._latency(endpoint, method).observe(time.perf_counter() - started)


class MetricsResource:
    auth_required = False

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        encoder, content_type = choose_encoder(req.get_header("Accept") or "")
        resp.data = encoder(self.registry)
        resp.content_type = content_type


def build(backend: Backend, multiprocess_dir: Path | None,
          models: Sequence[tuple[str, bool]] = ()) -> tuple[RequestMetrics, CollectorRegistry]:
    """The metrics this worker records, and the registry that ``/metrics`` exposes; ``models``:
    the served models (name, whether the cross-encoder), whose engine figures are labelled apart."""
    scrape = CollectorRegistry()
    if multiprocess_dir is None:
        recorded = RequestMetrics(scrape)
    else:
        if not getattr(values.ValueClass, "_multiprocess", False):
            # prometheus_client chose in-memory storage when first imported; the
            # counts of the other workers would silently be missing.
            raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; "
                               "import it only in the web workers")
        recorded = RequestMetrics(None)  # written to files; the collector below reads them all
        # prometheus_client leaves this __init__ unannotated.
        MultiProcessCollector(scrape, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
    scrape.register(EngineCollector(backend, models))
    return recorded, scrape
