"""The cross-encoder's inputs: (query, passage) pairs tokenized exactly as FlagEmbedding's
``FlagReranker.compute_score`` tokenizes them, with the plain ``tokenizers`` library (no torch).

FlagReranker (1.4, under transformers 5) builds each pair in four moves, which ``pair_ids``
repeats one for one, so that the engine's logits equal FlagReranker's:

1. the query is tokenized without special tokens and cut to ``query_max_length`` tokens
   (default three quarters of ``max_length``), the passage likewise to ``max_length``;
2. both are decoded back to text (special tokens kept, no clean-up of spaces);
3. the two texts are tokenized again as a pair with special tokens, ``<s> query </s></s>
   passage </s>`` for XLM-R;
4. only the passage is cut (at its end) until the pair holds ``max_length`` tokens.

A passage that is empty as text in move 3 is no second text to transformers: the pair is
then ``<s> query </s>``, as there.

Step 2 matters: a word cut by step 1 may tokenize differently once it is text again. Where
the passage cannot absorb the cut (a query that grew past ``max_length`` in step 3, which
FlagReranker refuses with an error), the pair is cut at ``max_length`` keeping its last ``</s>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

DEFAULT_MAX_LENGTH = 512  # FlagReranker's default max_length


def load_tokenizer(model_path: Path) -> Tokenizer:
    """The tokenizer of a model folder, with no truncation or padding of its own."""
    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def pair_ids(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = DEFAULT_MAX_LENGTH,
             query_max_length: int | None = None) -> list[np.ndarray]:
    """Each pair's token ids (int32, special tokens included) as FlagReranker feeds them to the model.

    ``tokenizer``: with no truncation or padding set (``load_tokenizer``); ``max_length``: the
    most tokens of a pair; ``query_max_length``: of its query (None: ``max_length * 3 // 4``).
    """
    if not pairs:
        return []
    query_limit = max_length * 3 // 4 if query_max_length is None else query_max_length
    queries = _round_trip(tokenizer, [query for query, _ in pairs], query_limit)
    passages = _round_trip(tokenizer, [passage for _, passage in pairs], max_length)
    specials = tokenizer.num_special_tokens_to_add(is_pair=True)
    out = []
    for query, passage, text in zip(tokenizer.encode_batch(queries, add_special_tokens=False),
                                    tokenizer.encode_batch(passages, add_special_tokens=False), passages, strict=True):
        if not text:  # transformers takes an empty second text for none: the query alone
            out.append(np.array(tokenizer.post_process(query, None, add_special_tokens=True).ids, dtype=np.int32))
        else:
            out.append(_pair(tokenizer, query, passage, max_length - specials))
    return out


def _round_trip(tokenizer: Tokenizer, texts: list[str], limit: int) -> list[str]:
    """Moves 1 and 2: each text's first ``limit`` tokens, as text again."""
    encoded = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    return tokenizer.decode_batch([e.ids[:limit] for e in encoded], skip_special_tokens=False)


def _pair(tokenizer: Tokenizer, query: Encoding, passage: Encoding, room: int) -> np.ndarray:
    """Moves 3 and 4: the pair with its special tokens, the passage cut so that the texts take ``room`` tokens."""
    excess = len(query.ids) + len(passage.ids) - room
    fits = excess <= 0
    if not fits and excess < len(passage.ids):
        passage.truncate(len(passage.ids) - excess)
        fits = True
    ids = np.array(tokenizer.post_process(query, passage, add_special_tokens=True).ids, dtype=np.int32)
    if not fits:
        limit = room + tokenizer.num_special_tokens_to_add(is_pair=True)
        ids = np.concatenate((ids[: limit - 1], ids[-1:]))
    return ids
