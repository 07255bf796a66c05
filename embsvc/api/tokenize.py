"""``POST /tokenize``: token ids, tokens and counts (embsvc/core/tokenize.py), or, for a
body in text-embeddings-inference's form (``inputs``), TEI's tokens with their offsets."""

from __future__ import annotations

from typing import Any

import falcon

from embsvc.api import tei
from embsvc.api.body import boolean, check_model, max_length, read_json_object, texts
from embsvc.config import Settings
from embsvc.core.tei import TEIService
from embsvc.core.tokenize import TokenizeRequest, TokenizeService
from embsvc.errors import use_tei_shape


def parse_tokenize_request(body: dict[str, Any], settings: Settings) -> TokenizeRequest:
    check_model(body, settings)
    return TokenizeRequest(
        texts=texts(body, "input", settings.max_inputs),
        max_length=max_length(body, settings.max_tokens),
        truncate=boolean(body, "truncate", True),
    )


class Tokenize:
    auth_required = True

    def __init__(self, settings: Settings, service: TokenizeService, tei_service: TEIService) -> None:
        self.settings, self.service, self.tei_service = settings, service, tei_service

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json_object(req, self.settings.max_request_bytes)
        resp.content_type = falcon.MEDIA_JSON
        if tei.is_tei_tokenize(body):
            use_tei_shape(req)  # a TEI client reads TEI's errors; before this, nothing told them apart
            resp.data = self.tei_service.tokenize(*tei.parse_tokenize(body, self.settings))
        else:
            resp.data = self.service.tokenize(parse_tokenize_request(body, self.settings))
