"""Tokenizing for clients: token ids, tokens and counts, cut by the same rules as
embeddings, so that they can chunk their documents to the model's limit. No engine
is involved: the web worker's tokenizer answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embsvc.core.serialize import dumps
from embsvc.core.tokenizer import LazyTokenizer, Token, cut


@dataclass(frozen=True)
class TokenizeRequest:
    texts: list[str]
    max_length: int
    truncate: bool


class TokenizeService:
    def __init__(self, model_name: str, tokenizer: LazyTokenizer) -> None:
        self.model_name, self.tokenizer = model_name, tokenizer

    def tokenize(self, request: TokenizeRequest) -> bytes:
        tokenizer = self.tokenizer.get()
        full = tokenizer.encode(request.texts)
        kept = cut(full, request.max_length, request.truncate)
        data = [_item(i, whole, ids, tokenizer.tokens(ids))
                for i, (whole, ids) in enumerate(zip(full, kept, strict=True))]
        total = sum(len(ids) for ids in kept)
        return dumps({"object": "list", "model": self.model_name, "data": data,
                      "usage": {"prompt_tokens": total, "total_tokens": total}})

    def spans(self, texts: list[str], add_special_tokens: bool) -> list[list[Token]]:
        """Each text's tokens with their character offsets, uncut (TEI's /tokenize)."""
        return self.tokenizer.get().spans(texts, add_special_tokens)

    def decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return self.tokenizer.get().decode(ids, skip_special_tokens)


def _item(index: int, full: np.ndarray, ids: np.ndarray, tokens: list[str]) -> dict[str, object]:
    return {"object": "tokens", "index": index, "ids": ids, "tokens": tokens, "count": len(ids),
            "untruncated_count": len(full), "truncated": len(ids) < len(full)}
