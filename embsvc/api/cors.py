"""Middleware: ``Vary: Origin`` on every answer when CORS allows a list of origins.

With such a list the answer's ``Access-Control-Allow-Origin`` depends on the request's
``Origin``: without ``Vary: Origin`` a shared cache could hand one origin's answer to
another (or an answer without the header to a browser that needs it). ``*`` answers the
same to every origin, so it needs no ``Vary``.
"""

from __future__ import annotations

import falcon


class VaryOrigin:
    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        resp.append_header("Vary", "Origin")
