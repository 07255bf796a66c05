"""The engine's cross-encoder scores equal FlagEmbedding's ``FlagReranker.compute_score`` on the same
folder in float32: raw logits, and normalized ones (sigmoid), with FlagReranker's own pair
tokenization and max_length (embsvc/core/rerank_pairs.py), through a real engine process."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from FlagEmbedding import FlagReranker

from embsvc.core.rerank_pairs import load_tokenizer, pair_ids
from testkit.reranker_builder import is_built, reranker_config
from testkit.workload import MIXED_TEXTS, PARAGRAPH

QUERIES = ["What is BGE-M3 hybrid retrieval?", "Как работает поиск по документам?", "检索", PARAGRAPH]
# Of every length, several scripts; the longest passage is past max_length and cut by its end.
PASSAGES = MIXED_TEXTS
PAIRS = [(query, passage) for query in QUERIES for passage in PASSAGES]


@pytest.fixture(scope="module")
def flag_reranker(tiny_reranker) -> FlagReranker:
    return FlagReranker(str(tiny_reranker), use_fp16=False, devices="cpu")


@pytest.fixture(scope="module")
def pair_tokenizer(tiny_reranker):
    return load_tokenizer(tiny_reranker)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


@pytest.mark.parametrize("max_length", [512, 40])
def test_logits_equal_compute_score_raw_and_normalized(rerank_client, flag_reranker, pair_tokenizer, max_length):
    ids = pair_ids(pair_tokenizer, PAIRS, max_length)
    assert max(len(x) for x in ids) == max_length, "a pair is cut to max_length"
    ours = rerank_client.rerank(ids)
    assert ours.dtype == np.float32 and ours.shape == (len(PAIRS),)
    # batch_size 1: each pair alone in the reference, no padding (its padded batches: the test below).
    raw = np.array(flag_reranker.compute_score(PAIRS, max_length=max_length, batch_size=1))
    assert raw.std() > 0.01, "the tiny model tells pairs apart: the comparison means something"
    np.testing.assert_allclose(ours, raw, atol=1e-4, rtol=0)
    normalized = np.array(flag_reranker.compute_score(PAIRS, max_length=max_length, batch_size=1, normalize=True))
    np.testing.assert_allclose(sigmoid(ours), normalized, atol=1e-4, rtol=0)


def test_a_pair_scores_the_same_alone_batched_and_beside_other_jobs(rerank_client, flag_reranker, pair_tokenizer):
    ids = pair_ids(pair_tokenizer, PAIRS, 512)
    together = rerank_client.rerank(ids)
    with ThreadPoolExecutor(6) as pool:  # jobs arriving together share passes
        alone = np.concatenate(list(pool.map(lambda x: rerank_client.rerank([x]), ids)))
    np.testing.assert_allclose(alone, together, atol=1e-5, rtol=0)
    padded = np.array(flag_reranker.compute_score(PAIRS, max_length=512, batch_size=len(PAIRS)))
    np.testing.assert_allclose(together, padded, atol=1e-4, rtol=0)  # FlagReranker's own batching, padded


def test_the_test_cross_encoder_has_bge_reranker_v2_m3s_layout(tiny_reranker, tiny_model):
    config = json.loads((tiny_reranker / "config.json").read_text())
    assert config["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert config["id2label"] == {"0": "LABEL_0"} and config["max_position_embeddings"] == 8194
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tiny_reranker / name).read_bytes() == (tiny_model / name).read_bytes(), name
    assert is_built(tiny_reranker, "tiny") and not is_built(tiny_reranker, "full")
    full = reranker_config("full", 0)  # the benchmark's, without its 2.3 GB of weights
    assert (full.num_hidden_layers, full.hidden_size, full.intermediate_size, full.num_attention_heads,
            full.max_position_embeddings, full.vocab_size, full.num_labels) == (24, 1024, 4096, 16, 8194, 250002, 1)
