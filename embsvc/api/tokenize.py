"""``POST /tokenize``: token ids, tokens and counts (embsvc/core/tokenize.py)."""

from __future__ import annotations

from typing import Any

import falcon

from embsvc.api.body import boolean, check_model, max_length, read_json_object, texts
from embsvc.config import Settings
from embsvc.core.tokenize import TokenizeRequest, TokenizeService


def parse_tokenize_request(body: dict[str, Any], settings: Settings) -> TokenizeRequest:
    check_model(body, settings)
    return TokenizeRequest(
        texts=texts(body, "input", settings.max_inputs),
        max_length=max_length(body, settings.max_tokens),
        truncate=boolean(body, "truncate", True),
    )


class Tokenize:
    auth_required = True

    def __init__(self, settings: Settings, service: TokenizeService) -> None:
        self.settings, self.service = settings, service

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = parse_tokenize_request(read_json_object(req, self.settings.max_request_bytes), self.settings)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.service.tokenize(request)
