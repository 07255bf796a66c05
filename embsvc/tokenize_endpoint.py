"""``POST /tokenize``: token ids, tokens and counts, cut by the same rules as
embeddings, so that clients can chunk their documents to the model's limit.
No engine is involved: the web worker's tokenizer answers."""

from __future__ import annotations

from dataclasses import dataclass

import falcon
import numpy as np

from embsvc.config import Settings
from embsvc.serialize import dumps
from embsvc.service import EmbeddingService
from embsvc.validation import boolean, check_model, max_length, read_json_object, texts


@dataclass(frozen=True)
class TokenizeRequest:
    texts: list[str]
    max_length: int
    truncate: bool


def parse_tokenize_request(body: dict, settings: Settings) -> TokenizeRequest:
    check_model(body, settings)
    return TokenizeRequest(
        texts=texts(body, "input", settings.max_inputs),
        max_length=max_length(body, settings.max_tokens),
        truncate=boolean(body, "truncate", True),
    )


def token_item(index: int, full: np.ndarray, ids: np.ndarray, tokens: list[str]) -> dict:
    return {"object": "tokens", "index": index, "ids": ids, "tokens": tokens, "count": len(ids),
            "untruncated_count": len(full), "truncated": len(ids) < len(full)}


class Tokenize:
    auth_required = True

    def __init__(self, service: EmbeddingService) -> None:
        self.service = service

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        settings = self.service.settings
        request = parse_tokenize_request(read_json_object(req, settings.max_request_bytes), settings)
        tokenizer = self.service.tokenizer()
        full = tokenizer.encode(request.texts)
        kept = self.service.cut(full, request.max_length, request.truncate)
        data = [token_item(i, whole, ids, tokenizer.tokens(ids))
                for i, (whole, ids) in enumerate(zip(full, kept, strict=True))]
        total = sum(len(ids) for ids in kept)
        resp.content_type = falcon.MEDIA_JSON
        resp.data = dumps({"object": "list", "model": settings.model_name, "data": data,
                           "usage": {"prompt_tokens": total, "total_tokens": total}})
