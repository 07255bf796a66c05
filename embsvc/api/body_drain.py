"""Middleware: a request answered before its body was read (413 over MAX_REQUEST_BYTES, 401, 404)
has the rest of its body read and dropped first, the way nginx does.

A client that writes its whole body before it reads the answer (Python's ``http.client``, for
one) otherwise gets a broken pipe instead of the 413: gunicorn reads at most 64 KiB of an unread
body and closes the connection while the client is still sending. Reading the rest costs a few
milliseconds on a local network and keeps the connection usable.

Bounded: at most ``DRAIN_FACTOR`` × MAX_REQUEST_BYTES are read and dropped, within ``DRAIN_S``. A body announced
larger than that is not read at all: gunicorn closes the connection after the answer, and a
client still sending gets a reset; nothing of the body is kept in memory either way.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Protocol

import falcon

from embsvc.config import DRAIN_FACTOR

DRAIN_S = 10.0  # a slow client must not hold a worker thread for long
_CHUNK = 64 * 1024


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class DrainUnreadBody:
    def __init__(self, max_request_bytes: int) -> None:
        self.limit = DRAIN_FACTOR * max_request_bytes
        # Of a chunked body the endpoint may have read up to MAX_REQUEST_BYTES already.
        self.chunked_limit = self.limit - max_request_bytes

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        if req.context.get("body_broken", False):
            return  # nothing more of it can be read: the connection closes instead
        length = req.content_length
        drained = True
        if length is not None:
            if not req.bounded_stream.eof:
                drained = length <= self.limit and (_discard(req, req.bounded_stream, length)
                                                    or req.bounded_stream.eof)
        elif "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
            # gunicorn's reader of a chunked body ends with the body: at its end a read gives b"" at once.
            drained = _discard(req, req.stream, self.chunked_limit)
        if not drained:
            # Else gunicorn would read on for the next request, a thread held by however slow a client.
            resp.set_header("Connection", "close")


def _discard(req: falcon.Request, stream: _Readable, most: int) -> bool:
    """Read and drop up to ``most`` bytes of ``stream``; True when it ended within the bounds."""
    sock = req.env.get("gunicorn.socket")
    sock = sock if isinstance(sock, socket.socket) else None
    before = sock.gettimeout() if sock is not None else None
    deadline = time.monotonic() + DRAIN_S
    try:
        while most > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if sock is not None:
                sock.settimeout(remaining)  # gunicorn's threads read without a timeout of their own
            chunk = stream.read(min(_CHUNK, most))
            if not chunk:
                return True
            most -= len(chunk)
        return False
    except OSError:  # too slow (TimeoutError), or the client went away: gunicorn closes the connection
        return False
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(before)
