"""The ``X-Request-ID`` of each request: taken from the client (or nginx) or made here.

It is echoed in the response and held in ``runtime.logs.request_id`` while the
request is served, so every log line written for the request carries it.
"""

from __future__ import annotations

import os
import re

import falcon

from runtime import logs

HEADER = "X-Request-ID"
# A client's id is kept only when it is short and plain: it ends up in log lines
# and in a response header, where control characters or kilobytes do harm.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def choose(candidate: str | None) -> str:
    if candidate and _ACCEPTED.fullmatch(candidate):
        return candidate
    return os.urandom(16).hex()  # a random 128-bit id, as uuid4's hex without its version bits (a quarter of its cost)


class RequestId:
    """Falcon middleware; first in the chain, so even a 401 is answered with the id."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = choose(req.get_header(HEADER))
        req.context.request_id = rid
        req.context.request_id_token = logs.request_id.set(rid)
        resp.set_header(HEADER, rid)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        token = req.context.get("request_id_token")
        if token is not None:
            # The worker thread serves other requests next: leave no id behind.
            logs.request_id.reset(token)
            req.context.request_id_token = None
