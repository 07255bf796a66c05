"""Bearer-token check for the resources that ask for it: ``auth_required = True``, or the
set of methods that need a token (``GET /`` is public, ``POST /`` is not).

The messages are the original service's words ("Missing API token", "Invalid API token").
A CORS preflight (``OPTIONS``) never carries credentials, so it is never asked for them.
"""

from __future__ import annotations

import hmac
from typing import Any

import falcon

from embsvc.errors import Unauthorized


class BearerAuth:
    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         params: dict[str, Any]) -> None:
        if not needs_token(resource, req.method):
            return  # unknown paths get their 404; public endpoints need nothing
        header = req.get_header("Authorization")
        if not header:
            raise Unauthorized("Missing API token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Invalid API token: send 'Authorization: Bearer <token>'")
        if not self._valid(token.strip().encode("utf-8", "surrogateescape")):
            raise Unauthorized("Invalid API token")

    def _valid(self, candidate: bytes) -> bool:
        # Compare with every token, in constant time, so that timing tells nothing
        # about which token (if any) nearly matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(candidate, token)
        return matched


def needs_token(resource: object, method: str) -> bool:
    if resource is None or method == "OPTIONS":
        return False
    required = getattr(resource, "auth_required", False)
    return method in required if isinstance(required, frozenset) else bool(required)
