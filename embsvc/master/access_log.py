"""gunicorn's access log as one structured record per request.

gunicorn formats its access line from ``access_log_format``, a printf string
with quotes escaped its own way, which no JSON shipper can parse. This logger
hands the same facts to the logging set-up of ``runtime.logs`` as fields, so
that ``LOG_FORMAT=json`` gives ``{"status": 200, "duration_ms": 3.1, ...}`` and
``LOG_FORMAT=text`` a classic line, query values redacted. The request id comes from the
response's ``X-Request-ID`` header: the app's middleware has finished, and reset the
request's context, by the time gunicorn logs; ``engine_ms`` (the part of the request's time
spent waiting for the model), ``queue_ms`` and ``passes_ms`` (its parts in the engine) from
its ``Server-Timing`` header.

Wired in gunicorn.conf.py with ``logger_class``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gunicorn.glogging import Logger

from runtime import logs

if TYPE_CHECKING:
    from gunicorn.asgi.protocol import ASGIResponseInfo
    from gunicorn.http.wsgi import Response


REDACTED = "***"


class AccessLogger(Logger):
    # ``resp``: the WSGI workers' Response, or the ASGI worker's ASGIResponseInfo (whose status may be an int).
    def access(self, resp: Response | ASGIResponseInfo, req: object, environ: Mapping[str, Any],
               request_time: timedelta) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status
        assert status is not None  # gunicorn logs a response after start_response has set its status
        code = int(status.split(None, 1)[0]) if isinstance(status, str) else int(status)
        duration_ms = request_time.total_seconds() * 1000
        method = environ.get("REQUEST_METHOD", "-")
        path, _, query = (environ.get("RAW_URI") or environ.get("PATH_INFO", "")).partition("?")
        uri = f"{path}?{redact(query)}" if query else path
        protocol = environ.get("SERVER_PROTOCOL", "-")
        remote = environ.get("REMOTE_ADDR", "-")
        sent = getattr(resp, "sent", None)
        fields: dict[str, object] = {
            "event": "access",
            "remote_addr": remote,
            "method": method,
            "path": environ.get("PATH_INFO", ""),
            "query": redact(environ.get("QUERY_STRING") or "") or None,
            "protocol": protocol,
            "status": code,
            "bytes": sent,
            "duration_ms": round(duration_ms, 3),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "request_id": _header(resp, "x-request-id"),
            **engine_times(_header(resp, "server-timing")),
        }
        message = f'{remote} "{method} {uri} {protocol}" {code} {"-" if sent is None else sent} {duration_ms:.1f}ms'
        logs.write_info(self.access_log, message, fields)


def redact(query: str) -> str:
    """The query with each value replaced by ``***``: a client may put a secret there (a token
    where the Authorization header belongs), and a log keeps it for anyone who reads it."""
    names = (part.partition("=") for part in query.split("&"))
    return "&".join(f"{name}={REDACTED}" if sep and value else f"{name}{sep}" for name, sep, value in names)


def engine_times(server_timing: str | None) -> dict[str, float]:
    """The engine's part of a request's time and its parts, from the app's ``Server-Timing``
    header (embsvc/api/server_timing.py): ``engine_ms``, ``queue_ms``, ``passes_ms``; none where
    the request reached no engine."""
    return {f"{name}_ms": float(ms) for name, ms in _TIMING.findall(server_timing or "")}


_TIMING = re.compile(r"\b(engine|queue|passes);dur=([0-9.]+)")


def _header(resp: object, name: str) -> str | None:
    headers: Iterable[tuple[str, str]] = getattr(resp, "headers", None) or ()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
