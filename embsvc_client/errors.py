"""The server's error answers as exceptions, one class per status (docs/api.md, Errors)."""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

import httpx


class EmbsvcError(Exception):
    """Base of every exception this package raises itself (httpx's transport errors pass through)."""


class APIError(EmbsvcError):
    """The server answered with an error status.

    ``message`` is the server's own text, ``error_type`` and ``param`` come from its ``error``
    object, ``retry_after`` is the ``Retry-After`` header in seconds (503 and 429) or ``None``.
    """

    def __init__(self, status: int, message: str, *, error_type: str | None = None, param: str | None = None,
                 request_id: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.request_id = request_id
        self.retry_after = retry_after


class BadRequestError(APIError):
    """400 (and 405): the request is wrong; sending it again gives the same answer."""


class AuthenticationError(APIError):
    """401: a missing or wrong token."""


class NotFoundError(APIError):
    """404: an unknown model name or path."""


class PayloadTooLargeError(APIError):
    """413: too many inputs in one request (lower ``batch_size``) or too large a body."""


class RateLimitError(APIError):
    """429: refused by a proxy's rate limit; retried after its ``Retry-After``."""


class InternalServerError(APIError):
    """500: the server failed, such as a failed forward pass."""


class ServiceUnavailableError(APIError):
    """503: the queue is full, or the engine is loading or restarting; retried after ``Retry-After``."""


class GatewayTimeoutError(APIError):
    """504: not answered within the server's ``REQUEST_TIMEOUT_S``."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError, 401: AuthenticationError, 404: NotFoundError, 405: BadRequestError,
    413: PayloadTooLargeError, 429: RateLimitError, 500: InternalServerError, 503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def error_from(response: httpx.Response) -> APIError:
    """The exception for an error answer, whatever its body (a proxy in front may answer in HTML)."""
    message, error_type, param = _read_body(response)
    cls = _BY_STATUS.get(response.status_code, APIError)
    return cls(response.status_code, message, error_type=error_type, param=param,
               request_id=response.headers.get("X-Request-ID"),
               retry_after=parse_retry_after(response.headers.get("Retry-After")))


def _read_body(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """(message, type, param) from this server's ``{"error": {...}, "detail": ...}`` or another shape."""
    try:
        body: Any = response.json()
    except ValueError:  # not JSON: a proxy's page, or an empty body
        return response.text.strip()[:500] or response.reason_phrase, None, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message")), _str_or_none(error.get("type")), _str_or_none(error.get("param"))
    detail = body.get("detail", error) if isinstance(body, dict) else None
    return (str(detail) if detail is not None else response.text[:500]), None, None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date; ``None`` when absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass  # not seconds: an HTTP date, as RFC 9110 allows
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
