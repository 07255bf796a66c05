"""A bulk pass interrupted between its steps by another pass gives the vectors it gives
uninterrupted, and FlagEmbedding's: each pass keeps its own hidden states.

The model is the engine's (``M3Model``, in this process, on the tiny model); the engine's
device thread does exactly this between two steps (gpu_pool/engine/device_thread.py, ``_interleave``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_pool.model import m3, xlmr
from gpu_pool.model.m3 import M3Model
from gpu_pool.model.port import Outputs
from gpu_pool.wire.protocol import Kind
from testkit.passes import forward
from testkit.workload import MIXED_TEXTS

ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
ONE_PART = xlmr.SCORES_PER_TOKEN  # texts of up to 512 tokens: attention in one part


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> M3Model:
    return M3Model(tiny_model, torch.device("cpu"), torch.float32, threads=1)


def packed(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = [x[:512] for x in tokenizer.encode(texts)]
    return np.concatenate(ids), np.array([len(x) for x in ids], dtype=np.int64)


def run(model: M3Model, ids: np.ndarray, lengths: np.ndarray, step_tokens: int | None = None) -> Outputs:
    return forward(model, ids, lengths, ALL, np.arange(len(lengths)), step_tokens)


def assert_equal(got: Outputs, expected: Outputs) -> None:
    for name in ("dense", "sparse", "colbert"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)


@pytest.mark.parametrize("scores_per_token, step_tokens", [(ONE_PART, None), (3, None), (ONE_PART, 37)])
def test_a_pass_interrupted_at_every_step_gives_the_same_vectors(model, tokenizer, encoded, scores_per_token,
                                                                  step_tokens, monkeypatch):
    # 3 scores per token: attention in several parts, texts cut by query rows (as long texts
    # are); 37 rows a step: every product in chunks, as a long text's bulk pass runs.
    monkeypatch.setattr(xlmr, "SCORES_PER_TOKEN", scores_per_token)
    bulk_ids, bulk_lengths = packed(tokenizer, MIXED_TEXTS[:6])
    query_ids, query_lengths = packed(tokenizer, ["What is BGE-M3?", "hybrid retrieval"])
    alone = run(model, bulk_ids, bulk_lengths, step_tokens)
    query_alone = run(model, query_ids, query_lengths)

    bulk = model.start(bulk_ids, bulk_lengths, ALL, np.arange(len(bulk_lengths)), step_tokens)
    interrupted = 0
    while not bulk.step():
        query = run(model, query_ids, query_lengths)  # a whole pass between two steps
        assert_equal(query, query_alone)
        interrupted += 1
    assert interrupted == bulk.steps - 1 == bulk.steps_per_layer * model.layers - 1
    assert (bulk.steps_per_layer == 4) is (scores_per_token == ONE_PART and step_tokens is None)  # one part, one chunk
    assert bulk.step_tokens <= (step_tokens or len(bulk_ids)) < 2 * bulk.step_tokens  # equal chunks
    assert_equal(run(model, query_ids, query_lengths), query_alone)  # and after the last step, before the heads
    assert_equal(bulk.outputs_async().wait(), alone)

    # And both equal FlagEmbedding's (the same tolerance as the vector tests).
    ref = encoded(MIXED_TEXTS[:6], 512, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    got = bulk.outputs_async().wait()
    for i, dense in enumerate(got.dense):
        assert dense @ ref["dense_vecs"][i] / np.linalg.norm(ref["dense_vecs"][i]) >= 0.99999
    rows = np.cumsum(bulk_lengths - 1)
    for i, colbert in enumerate(np.split(got.colbert, rows[:-1])):
        assert np.abs(colbert - ref["colbert_vecs"][i]).max() <= 1e-4


def test_two_passes_stepped_in_turn_do_not_disturb_each_other(model, tokenizer):
    first_ids, first_lengths = packed(tokenizer, MIXED_TEXTS[:3])
    second_ids, second_lengths = packed(tokenizer, MIXED_TEXTS[3:7])
    first = model.start(first_ids, first_lengths, ALL, np.arange(len(first_lengths)))
    second = model.start(second_ids, second_lengths, ALL, np.arange(len(second_lengths)))
    while not first.step():
        second.step()
    while not second.step():
        pass
    assert_equal(first.outputs_async().wait(), run(model, first_ids, first_lengths))
    assert_equal(second.outputs_async().wait(), run(model, second_ids, second_lengths))


def test_a_pass_told_one_thread_runs_on_one_between_the_steps_of_a_pass_on_two(tiny_model, tokenizer, monkeypatch):
    """The engine runs a query on one thread while bulk work is under way (device_thread.py):
    each pass sets its own threads at every step, whatever ran between."""
    monkeypatch.setattr(m3, "PARALLEL_MIN_FLOPS", 1.0)  # the tiny model's passes count as large
    two = M3Model(tiny_model, torch.device("cpu"), torch.float32, threads=2)
    bulk_ids, bulk_lengths = packed(tokenizer, MIXED_TEXTS[:3])
    query_ids, query_lengths = packed(tokenizer, MIXED_TEXTS[3:4])
    saved = torch.get_num_threads()
    try:
        bulk = two.start(bulk_ids, bulk_lengths, ALL, np.arange(len(bulk_lengths)))
        bulk.step()
        assert torch.get_num_threads() == 2
        query = two.start(query_ids, query_lengths, ALL, np.arange(1), one_thread=True)
        query.finish()
        assert torch.get_num_threads() == 1
        got = query.outputs_async().wait()
        bulk.step()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
    # The same vectors as on two threads (float32: a sum split otherwise may round differently).
    expected = run(two, query_ids, query_lengths)
    for name in ("dense", "sparse", "colbert"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=0, atol=1e-6, err_msg=name)
