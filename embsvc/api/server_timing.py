"""``Server-Timing: engine;dur=MS``: how long a request waited for the model.

A slow answer is either the web worker's (reading, tokenizing, serializing, or waiting for
its GIL) or the engine's (the queue, the pass, the answer's writing). The header says which,
per request, in the W3C form that browsers' developer tools and nginx's
``$upstream_http_server_timing`` read; the access log copies it (``engine_ms``). Answers that
reached no engine (a refusal, /health) carry none.
"""

from __future__ import annotations

import falcon

from gpu_pool import engine_seconds

HEADER = "Server-Timing"


class ServerTiming:
    """Falcon middleware: counts the engines' time of each request (``gpu_pool.client``
    adds to the count) and puts it in the header."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        spent = [0.0]
        req.context.engine_timing = spent, engine_seconds.set(spent)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        held = req.context.get("engine_timing")
        if held is None:
            return
        spent, token = held
        engine_seconds.reset(token)  # the worker thread serves other requests next
        req.context.engine_timing = None
        if spent[0]:
            resp.set_header(HEADER, f"engine;dur={spent[0] * 1000:.2f}")
