"""HEAD wherever GET is answered: load balancers, uptime checkers and ``curl -I`` ask with it.

A HEAD is a GET without its body (RFC 9110 9.3.2): the GET responder runs, and falcon
sends its status and headers, Content-Length included, and drops the body.
"""

from __future__ import annotations

from typing import Any

import falcon


class App(falcon.App[falcon.Request, falcon.Response]):
    """falcon's App, whose routes answer HEAD with their GET responder."""

    def add_route(self, uri_template: str, resource: object, **kwargs: Any) -> None:
        suffix = kwargs.get("suffix")
        get, head = (f"on_get_{suffix}", f"on_head_{suffix}") if suffix else ("on_get", "on_head")
        if hasattr(resource, get) and not hasattr(resource, head):
            setattr(resource, head, getattr(resource, get))
        super().add_route(uri_template, resource, **kwargs)
