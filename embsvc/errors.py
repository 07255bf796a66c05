"""The closed set of API errors and the one place that turns errors into responses.

Every error body has the OpenAI shape under ``error`` and the same message under
``detail`` (what clients of the original FastAPI service read). Nothing from an
exception but its public message reaches the client.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import falcon
import orjson

from gpu_pool import EngineError, EngineFailed, EngineOverloaded, EngineTimeout, EngineUnavailable

log = logging.getLogger("embsvc")


class APIError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.headers = message, param, headers or {}


class InvalidRequest(APIError):
    pass


class PayloadTooLarge(APIError):
    status = 413


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(APIError):
    status = 404
    type = "not_found_error"


class Overloaded(APIError):
    status = 503
    type = "overloaded_error"


class Unavailable(APIError):
    status = 503
    type = "unavailable_error"


class Timeout(APIError):
    status = 504
    type = "timeout_error"


class ServerError(APIError):
    status = 500
    type = "server_error"


_FALCON_TYPES = {404: "not_found_error", 405: "invalid_request_error", 401: "authentication_error"}


def error_body(error: APIError) -> bytes:
    return orjson.dumps({
        "error": {"message": error.message, "type": error.type, "param": error.param, "code": None},
        "detail": error.message,
    })


def _respond(resp: falcon.Response, error: APIError) -> None:
    resp.status = error.status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = error_body(error)
    for name, value in error.headers.items():
        resp.set_header(name, value)


def from_engine(exc: EngineError) -> APIError:
    if isinstance(exc, EngineOverloaded):
        return Overloaded(str(exc), headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, EngineTimeout):
        return Timeout(str(exc))
    if isinstance(exc, EngineUnavailable):
        return Unavailable(str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, EngineFailed) and exc.out_of_memory:
        return Unavailable("the model ran out of memory on this request; send fewer or shorter inputs")
    return ServerError("the model failed on this request")


def handle_api_error(req: falcon.Request, resp: falcon.Response, exc: APIError, params: dict[str, Any]) -> None:
    _respond(resp, exc)


def handle_engine_error(req: falcon.Request, resp: falcon.Response, exc: EngineError, params: dict[str, Any]) -> None:
    _respond(resp, from_engine(exc))


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
    _respond(resp, error)


def handle_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict[str, Any]) -> None:
    log.exception("Unexpected error on %s %s", req.method, req.path)
    _respond(resp, ServerError("internal server error"))


def register(app: falcon.App[falcon.Request, falcon.Response]) -> None:
    # Falcon picks the most specific handler for an exception's class.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(EngineError, handle_engine_error)
    app.add_error_handler(APIError, handle_api_error)
