"""The closed set of API errors and the one place that turns errors into responses.

Every error body has the OpenAI shape under ``error`` and the same message under
``detail`` (what clients of the original FastAPI service read), except on the paths of
text-embeddings-inference's API (``api/tei``), which answer in TEI's shape,
``{"error": message, "error_type": kind}``, with TEI's statuses: a resource says so with
``tei_shape`` (True, or the methods that do), and ``/tokenize`` by ``use_tei_shape`` once
it has seen a TEI body. Nothing from an exception but its public message reaches the client.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import falcon
import orjson
from gunicorn.http.errors import ParseException

from gpu_pool import (
    ClientGone,
    EngineError,
    EngineFailed,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    ModelNotServed,
    SharedMemoryFull,
)

log = logging.getLogger("embsvc")

# The original service's words for a full queue; clients of it may show or match them.
QUEUE_FULL = "Server is currently handling maximum number of requests. Please try again later."
# What the operator raises when /dev/shm is too small (docs/operators.md says more).
SHM_ADVICE = ("the server's shared memory (/dev/shm) needs to be larger: docker run --shm-size, compose shm_size, "
              "or a Kubernetes emptyDir with medium: Memory mounted at /dev/shm (docs/operators.md)")


class APIError(Exception):
    status = 400
    type = "invalid_request_error"
    # The same fault in TEI's terms: its ErrorType, and the status TEI gives it
    # (router/src/http/server.rs; None: this error's own status).
    tei_type = "Validation"
    tei_status: int | None = None

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.headers = message, param, headers or {}


class InvalidRequest(APIError):
    tei_status = 422


class EmptyInput(InvalidRequest):
    """Nothing to embed: an empty body, list or text (TEI's "Empty", its only 400)."""

    tei_type, tei_status = "Empty", 400


class PayloadTooLarge(APIError):
    status = 413  # TEI's document gives its batch-size error this status too


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"
    tei_type = "Unauthorized"  # TEI answers 401 with no body; here the body says why

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(APIError):
    status = 404
    type = "not_found_error"


class Overloaded(APIError):
    status = 503
    type = "overloaded_error"
    tei_type, tei_status = "Overloaded", 429


class Unavailable(APIError):
    status = 503
    type = "unavailable_error"
    tei_type = "Unhealthy"


class Timeout(APIError):
    status = 504
    type = "timeout_error"
    tei_type = "Backend"


class ServerError(APIError):
    status = 500
    type = "server_error"
    tei_type = "Backend"


class ClientClosed(APIError):
    """The client left before the answer: nginx's 499, for the access log (nobody reads the body)."""

    status = 499
    type = "client_closed_request"


class ModelFailed(ServerError):
    """The forward pass failed: TEI's "Inference failed"."""

    tei_status = 424


_FALCON_TYPES = {404: "not_found_error", 405: "invalid_request_error", 401: "authentication_error"}


def error_body(error: APIError) -> bytes:
    return orjson.dumps({
        "error": {"message": error.message, "type": error.type, "param": error.param, "code": None},
        "detail": error.message,
    })


def tei_error_body(error: APIError) -> bytes:
    return orjson.dumps({"error": error.message, "error_type": error.tei_type})


def use_tei_shape(req: falcon.Request) -> None:
    """From now on this request's errors are answered in TEI's shape."""
    req.context.tei_shape = True


def _wants_tei_shape(resource: object, method: str) -> bool:
    shape = getattr(resource, "tei_shape", False)
    return method in shape if isinstance(shape, frozenset) else bool(shape)


class ErrorShape:
    """Middleware: marks the requests whose resource answers in TEI's shape, before any
    other middleware (authentication) can refuse them."""

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         params: dict[str, Any]) -> None:
        req.context.tei_shape = _wants_tei_shape(resource, req.method)


def _respond(req: falcon.Request, resp: falcon.Response, error: APIError) -> None:
    resp.content_type = falcon.MEDIA_JSON
    if req.context.get("tei_shape", False):
        resp.status = error.tei_status or error.status
        resp.data = tei_error_body(error)
    else:
        resp.status = error.status
        resp.data = error_body(error)
    for name, value in error.headers.items():
        resp.set_header(name, value)


def from_engine(exc: EngineError) -> APIError:
    if isinstance(exc, EngineOverloaded):
        # The original service's words first, then why.
        return Overloaded(f"{QUEUE_FULL} ({exc})", headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, SharedMemoryFull):
        retry = "send fewer or shorter inputs; or" if exc.never_fits else "retry shortly; if this persists,"
        return Overloaded(f"{exc}. {retry.capitalize()} {SHM_ADVICE}",
                          headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, EngineTimeout):
        return Timeout(str(exc))
    if isinstance(exc, EngineUnavailable):
        return Unavailable(str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, EngineFailed) and exc.out_of_memory:
        # The engine retried it alone: this input does not fit, whatever else runs beside it.
        return PayloadTooLarge(f"{exc}; send it shorter (max_length) or split it")
    if isinstance(exc, ClientGone):
        return ClientClosed(str(exc))
    if isinstance(exc, ModelNotServed):
        return NotFound(str(exc), param="model")
    return ModelFailed("the model failed on this request")


def handle_api_error(req: falcon.Request, resp: falcon.Response, exc: APIError, params: dict[str, Any]) -> None:
    _respond(req, resp, exc)


def handle_engine_error(req: falcon.Request, resp: falcon.Response, exc: EngineError, params: dict[str, Any]) -> None:
    _respond(req, resp, from_engine(exc))


def handle_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError,
                      params: dict[str, Any]) -> None:
    """Falcon's own errors (unknown path, wrong method) in our body shape."""
    status = exc.status_code
    message = exc.title if not exc.description else f"{exc.title}: {exc.description}"
    if status == 404:
        message = f"no such endpoint: {req.method} {req.path}"
    elif status == 405:
        message = f"method {req.method} is not allowed on {req.path}"
    error = APIError(message, headers=dict(exc.headers or {}))
    error.status, error.type = status, _FALCON_TYPES.get(status, "invalid_request_error")
    _respond(req, resp, error)


def handle_malformed_body(req: falcon.Request, resp: falcon.Response, exc: ParseException,
                          params: dict[str, Any]) -> None:
    """gunicorn's parser refused the body as the app read it (a malformed chunk, say): the
    client's fault, logged as such. The rest of the stream cannot be framed: the connection closes."""
    log.warning("Malformed request body on %s %s: %s", req.method, req.path, exc)
    req.context.body_broken = True
    _respond(req, resp, InvalidRequest(f"request body is malformed: {exc}"))
    resp.set_header("Connection", "close")


def handle_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict[str, Any]) -> None:
    log.exception("Unexpected error on %s %s", req.method, req.path)
    _respond(req, resp, ServerError("internal server error"))


def register(app: falcon.App[falcon.Request, falcon.Response]) -> None:
    # Falcon picks the most specific handler for an exception's class.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(EngineError, handle_engine_error)
    app.add_error_handler(APIError, handle_api_error)
    app.add_error_handler(ParseException, handle_malformed_body)
