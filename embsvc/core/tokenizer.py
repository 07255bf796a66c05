"""Tokenizing in the web worker, with the plain ``tokenizers`` library (no torch).

Inputs are tokenized whole, then cut: keeping the first ``max_length - 1`` ids
and the final ``</s>`` is exactly what the transformers tokenizer does with
``truncation=True`` (it truncates the text's tokens, then adds ``<s>``/``</s>``),
and the untruncated length tells ``truncate: false`` requests that they are too long.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from embsvc.errors import InvalidRequest, PayloadTooLarge, Unavailable

# The web workers are forked; tokenizers' thread pool must not be shared across forks.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# FlagEmbedding drops the cls, eos, pad and unk ids from the sparse weights.
_UNUSED_TOKENS = ("<s>", "</s>", "<pad>", "<unk>")

# The most characters of a text tokenized per token of its max_length. A token of bge-m3's
# tokenizer covers about 4 characters of English and 1 or 2 of Chinese or Japanese; even a word
# the vocabulary spells in long pieces stays far below 32 a token. So a text cut at 32 × max_length
# characters still holds more than max_length tokens, and the ones truncation keeps are the whole
# text's (only runs of white space, which make no tokens, could fall short): the cut spares
# tokenizing megabytes that truncation would throw away.
CHARS_PER_TOKEN = 32
# The most tokens in one /tokenize answer, in MAX_TOKENS: each is some 20 bytes of JSON in this
# server's shape and 60 in TEI's, so a body of a few megabytes must not make an answer of hundreds.
TOKENIZE_ANSWER_TOKENS = 32


class TextTokenizer:
    def __init__(self, model_path: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        ids = (self._tokenizer.token_to_id(t) for t in _UNUSED_TOKENS)
        self.unused_ids = np.array([i for i in ids if i is not None], dtype=np.int32)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=True)
        return [np.array(e.ids, dtype=np.int32) for e in encodings]

    def tokens(self, ids: np.ndarray) -> list[str]:
        return [self._tokenizer.id_to_token(int(i)) or "" for i in ids]

    def decode_each(self, ids: np.ndarray) -> list[str]:
        """Each id decoded alone, as FlagEmbedding's ``convert_id_to_token`` does
        (``▁hello`` -> ``hello``). Its clean-up of spaces before punctuation has
        nothing to do on a single token, so the plain decoder gives the same text."""
        return self._tokenizer.decode_batch([[int(i)] for i in ids], skip_special_tokens=False)

    def spans(self, texts: list[str], add_special_tokens: bool) -> list[list[Token]]:
        """Each text's tokens with the characters they cover (no truncation)."""
        # encode_batch, not encode_batch_fast: only the former tracks offsets.
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [[_token(text, *parts) for parts in zip(e.ids, e.tokens, e.special_tokens_mask, e.offsets, strict=True)]
                for text, e in zip(texts, encodings, strict=True)]

    def decode(self, ids: list[list[int]], skip_special_tokens: bool) -> list[str]:
        """Ids the vocabulary lacks are left out, as the tokenizers library (and so TEI) does."""
        return self._tokenizer.decode_batch(ids, skip_special_tokens=skip_special_tokens)


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # the characters it covers; a special token's own text
    special: bool
    start: int | None  # character offsets into the text; None for a special token
    stop: int | None


def _token(text: str, token_id: int, token: str, special: int, offsets: tuple[int, int]) -> Token:
    if special:
        return Token(token_id, token, True, None, None)
    start, stop = offsets
    return Token(token_id, text[start:stop], False, start, stop)


def _name_input(i: int) -> tuple[str, str]:
    return f"input[{i}]", "input"


def within_chars(texts: list[str], max_length: int, allow_truncation: bool,
                 name: Callable[[int], tuple[str, str]] = _name_input, direction: str = "right") -> list[str]:
    """The texts as they are tokenized: one longer than ``CHARS_PER_TOKEN`` × ``max_length``
    characters is cut there first, keeping the end that truncation keeps (its start, or with
    ``left`` its end); with truncation off it is too long, a 400 as when its tokens are counted."""
    limit = CHARS_PER_TOKEN * max_length
    bounded = []
    for i, text in enumerate(texts):
        if len(text) > limit:
            if not allow_truncation:
                where, param = name(i)
                raise InvalidRequest(f"{where} has {len(text)} characters, more than the limit of {limit} "
                                     f"({CHARS_PER_TOKEN} per token of max_length {max_length}), and truncate is "
                                     "false", param=param)
            text = text[-limit:] if direction == "left" else text[:limit]
        bounded.append(text)
    return bounded


def check_request_chars(texts: list[str], max_request_tokens: int, field: str) -> None:
    """Texts cut into windows are tokenized whole: so the bound on characters follows the request's
    bound on tokens, ``CHARS_PER_TOKEN`` × MAX_REQUEST_TOKENS characters in all, not one window's."""
    count, limit = sum(len(text) for text in texts), CHARS_PER_TOKEN * max_request_tokens
    if count > limit:
        raise PayloadTooLarge(f"{field} has {count} characters in all, more than the limit of {limit} for "
                              f"inputs cut into windows ({CHARS_PER_TOKEN} × MAX_REQUEST_TOKENS): send fewer or "
                              "shorter texts", param=field)


def check_request_tokens(count: int, max_request_tokens: int, field: str) -> None:
    """A request whose inputs are cut into windows holds at most MAX_REQUEST_TOKENS tokens in all."""
    if count > max_request_tokens:
        raise PayloadTooLarge(f"{field} has {count} tokens in all once cut into windows, more than "
                              f"MAX_REQUEST_TOKENS {max_request_tokens}: send fewer or shorter texts", param=field)


def check_answer_tokens(count: int, max_tokens: int) -> None:
    """A /tokenize answer holds at most ``TOKENIZE_ANSWER_TOKENS`` × MAX_TOKENS tokens."""
    limit = TOKENIZE_ANSWER_TOKENS * max_tokens
    if count > limit:
        raise PayloadTooLarge(f"the answer would hold {count} tokens, more than /tokenize's limit of {limit} "
                              f"({TOKENIZE_ANSWER_TOKENS} × MAX_TOKENS): send fewer or shorter texts")


def truncate(ids: np.ndarray, max_length: int, direction: str = "right") -> np.ndarray:
    """Cut to ``max_length`` ids, keeping the opening ``<s>`` and the closing ``</s>``:
    the text's tokens are cut at its end (``right``) or at its start (``left``)."""
    if len(ids) <= max_length:
        return ids
    if direction == "left":
        return np.concatenate((ids[:1], ids[len(ids) - (max_length - 1):]))
    return np.concatenate((ids[: max_length - 1], ids[-1:]))


def cut(encoded: list[np.ndarray], max_length: int, allow_truncation: bool,
        name: Callable[[int], tuple[str, str]] = _name_input, direction: str = "right") -> list[np.ndarray]:
    """Each input cut to ``max_length`` ids; with ``allow_truncation`` false a longer one is a 400.

    ``name(i)``: how the error names input ``i`` and which field it blames.
    """
    if not allow_truncation:
        for i, ids in enumerate(encoded):
            if len(ids) > max_length:
                where, param = name(i)
                raise InvalidRequest(f"{where} has {len(ids)} tokens, more than max_length {max_length}, "
                                     "and truncate is false", param=param)
    return [truncate(ids, max_length, direction) for ids in encoded]


class LazyTokenizer:
    """The tokenizer, loaded on first use: the model folder may still be downloading
    when the worker starts, so until an engine is ready a request gets a 503."""

    def __init__(self, model_path: Path, ready: Callable[[], bool]) -> None:
        self._path, self._ready = model_path, ready
        self._tokenizer: TextTokenizer | None = None
        self._lock = threading.Lock()

    def get(self) -> TextTokenizer:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    if not self._ready():
                        raise Unavailable("the model is loading", headers={"Retry-After": "1"})
                    self._tokenizer = TextTokenizer(self._path)
        return self._tokenizer
