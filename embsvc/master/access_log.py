"""gunicorn's access log as one structured record per request.

gunicorn formats its access line from ``access_log_format``, a printf string
with quotes escaped its own way, which no JSON shipper can parse. This logger
hands the same facts to the logging set-up of ``runtime.logs`` as fields, so
that ``LOG_FORMAT=json`` gives ``{"status": 200, "duration_ms": 3.1, ...}`` and
``LOG_FORMAT=text`` a classic line. The request id comes from the response's
``X-Request-ID`` header: the app's middleware has finished, and reset the
request's context, by the time gunicorn logs.

Wired in gunicorn.conf.py with ``logger_class``.
"""

from __future__ import annotations

from datetime import timedelta

from gunicorn.glogging import Logger


class AccessLogger(Logger):
    def access(self, resp: object, req: object, environ: dict, request_time: timedelta) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status
        code = int(status.split(None, 1)[0]) if isinstance(status, str) else int(status)
        duration_ms = request_time.total_seconds() * 1000
        method = environ.get("REQUEST_METHOD", "-")
        uri = environ.get("RAW_URI") or environ.get("PATH_INFO", "")
        protocol = environ.get("SERVER_PROTOCOL", "-")
        remote = environ.get("REMOTE_ADDR", "-")
        sent = getattr(resp, "sent", None)
        fields = {
            "event": "access",
            "remote_addr": remote,
            "method": method,
            "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING") or None,
            "protocol": protocol,
            "status": code,
            "bytes": sent,
            "duration_ms": round(duration_ms, 3),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "request_id": _header(resp, "x-request-id"),
        }
        self.access_log.info('%s "%s %s %s" %s %s %.1fms', remote, method, uri, protocol, code,
                             "-" if sent is None else sent, duration_ms, extra=fields)


def _header(resp: object, name: str) -> str | None:
    for key, value in getattr(resp, "headers", None) or ():
        if key.lower() == name:
            return value
    return None
