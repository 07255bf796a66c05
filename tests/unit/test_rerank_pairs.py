"""The cross-encoder's pairs are tokenized as FlagReranker tokenizes them (embsvc/core/rerank_pairs.py):
checked against FlagEmbedding's own steps on transformers' tokenizer of the same folder."""

from __future__ import annotations

import random

import pytest
from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat
from transformers import AutoTokenizer

from embsvc.core.rerank_pairs import load_tokenizer, pair_ids

# Scripts, specials as text, an emoji, white space of several kinds, and an empty word (two spaces).
WORDS = ("the", "quick", "brown", "fox", "Paris", "北京是中华人民共和国的首都", "Съешь", "же", "ещё", "hello,",
         "world!", "<s>", "</s>", "🙂", "zzzzqqq", "é", "", "naïve\tcafé")


def flag_reranker_ids(tokenizer, query: str, passage: str, max_length: int) -> list[int] | None:
    """FlagReranker.compute_score_single_gpu's tokenization of one pair (None: it refuses the pair)."""
    query_ids = tokenizer([query], add_special_tokens=False, max_length=max_length * 3 // 4,
                          truncation=True)["input_ids"][0]
    passage_ids = tokenizer([passage], add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"][0]
    try:
        item = prepare_for_model_compat(tokenizer, query_ids, passage_ids, truncation="only_second",
                                        max_length=max_length, padding=False)
    except Exception:  # noqa: BLE001 - the tokenizer's truncation error: the passage cannot absorb the cut
        return None
    return list(item["input_ids"])


def random_pairs(seed: int, count: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return [(text(rng.randint(0, 90)), text(rng.randint(0, 250))) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizers(tiny_model):
    return load_tokenizer(tiny_model), AutoTokenizer.from_pretrained(str(tiny_model))


EDGES = [("", ""), ("a query", ""), ("", "a passage"), ("word " * 3000, "passage " * 3000),
         ("北京" * 900, "学生们" * 2000), ("no spaces at all " + "x" * 5000, "short")]


@pytest.mark.parametrize("max_length", [512, 64, 24])
def test_pairs_are_the_ids_flag_reranker_feeds_its_model(tokenizers, max_length):
    ours, theirs = tokenizers
    pairs = random_pairs(max_length, 80) + EDGES
    compared = 0
    for (query, passage), ids in zip(pairs, pair_ids(ours, pairs, max_length), strict=True):
        assert len(ids) <= max_length and ids.dtype.name == "int32"
        reference = flag_reranker_ids(theirs, query, passage, max_length)
        if reference is not None:
            assert ids.tolist() == reference, (query[:60], passage[:60])
            compared += 1
    assert compared >= len(pairs) * 0.9


def test_a_query_alone_past_max_length_is_cut_keeping_the_last_special_token(tokenizers):
    ours, _ = tokenizers
    (ids,) = pair_ids(ours, [("one two three four five six seven eight nine ten", "x")], max_length=8,
                      query_max_length=8)
    assert len(ids) == 8 and ids[0] == 0 and ids[-1] == 2


def test_no_pairs_no_ids(tokenizers):
    assert pair_ids(tokenizers[0], []) == []
