"""Tokenizing for clients: token ids, tokens and counts, cut by the same rules as
embeddings, so that they can chunk their documents to the model's limit. No engine
is involved: the web worker's tokenizer answers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embsvc.core.serialize import dumps
from embsvc.core.tokenizer import CHARS_PER_TOKEN, LazyTokenizer, Token, check_answer_tokens, cut, within_chars
from embsvc.errors import PayloadTooLarge


@dataclass(frozen=True)
class TokenizeRequest:
    texts: list[str]
    max_length: int
    truncate: bool


class TokenizeService:
    def __init__(self, model_name: str, tokenizer: LazyTokenizer, max_tokens: int) -> None:
        self.model_name, self.tokenizer, self.max_tokens = model_name, tokenizer, max_tokens

    def tokenize(self, request: TokenizeRequest) -> bytes:
        """``untruncated_count``: of the text as tokenized, cut first past CHARS_PER_TOKEN × max_length
        characters (tokenizer.py says why that keeps the tokens truncation keeps)."""
        tokenizer = self.tokenizer.get()
        full = tokenizer.encode(within_chars(request.texts, request.max_length, request.truncate))
        kept = cut(full, request.max_length, request.truncate)
        check_answer_tokens(sum(len(ids) for ids in kept), self.max_tokens)
        data = [_item(i, whole, ids, tokenizer.tokens(ids))
                for i, (whole, ids) in enumerate(zip(full, kept, strict=True))]
        total = sum(len(ids) for ids in kept)
        return dumps({"object": "list", "model": self.model_name, "data": data,
                      "usage": {"prompt_tokens": total, "total_tokens": total}})

    def spans(self, texts: list[str], add_special_tokens: bool) -> list[list[Token]]:
        """Each text's tokens with their character offsets, uncut (TEI's /tokenize): so a text
        may have at most CHARS_PER_TOKEN × MAX_TOKENS characters."""
        limit = CHARS_PER_TOKEN * self.max_tokens
        for i, text in enumerate(texts):
            if len(text) > limit:
                raise PayloadTooLarge(f"inputs[{i}] has {len(text)} characters, more than /tokenize's limit of "
                                      f"{limit} ({CHARS_PER_TOKEN} × MAX_TOKENS)", param="inputs")
        spans = self.tokenizer.get().spans(texts, add_special_tokens)
        check_answer_tokens(sum(len(tokens) for tokens in spans), self.max_tokens)
        return spans

    def decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
        return self.tokenizer.get().decode(ids, skip_special_tokens)


def _item(index: int, full: np.ndarray, ids: np.ndarray, tokens: list[str]) -> dict[str, object]:
    return {"object": "tokens", "index": index, "ids": ids, "tokens": tokens, "count": len(ids),
            "untruncated_count": len(full), "truncated": len(ids) < len(full)}
