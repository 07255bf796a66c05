"""``Server-Timing: engine;dur=MS, queue;dur=MS, passes;dur=MS``: how long a request waited
for the model, and where.

A slow answer is either the web worker's (reading, tokenizing, serializing, or waiting for
its GIL) or the engine's: ``engine`` is the whole wait, from handing the job over to its
answer; of it, ``queue`` the engine's time before the job's first pass, ``passes`` from then
to its answer (its passes, and what ran between their steps); the rest is the pipes and the
threads' wake-ups. In the W3C form that browsers' developer tools and nginx's
``$upstream_http_server_timing`` read; the access log copies them (``engine_ms``,
``queue_ms``, ``passes_ms``). Answers that reached no engine (a refusal, /health) carry none.
"""

from __future__ import annotations

import falcon

from gpu_pool import EngineTime, engine_time

HEADER = "Server-Timing"


class ServerTiming:
    """Falcon middleware: counts the engines' time of each request (``gpu_pool.client``
    adds to the count) and puts it in the header."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        spent = EngineTime()
        req.context.engine_timing = spent, engine_time.set(spent)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        held = req.context.get("engine_timing")
        if held is None:
            return
        spent, token = held
        engine_time.reset(token)  # the worker thread serves other requests next
        req.context.engine_timing = None
        if spent.total_s:
            resp.set_header(HEADER, f"engine;dur={spent.total_s * 1000:.2f}, queue;dur={spent.queue_s * 1000:.2f}, "
                                    f"passes;dur={spent.passes_s * 1000:.2f}")
