"""Rerank jobs beside embedding jobs, without a model: a pass takes one model's items (the chooser),
a rerank job's segment holds one logit per pair, its outputs are cut per pair, and the engine's
figures tell the two models apart."""

from __future__ import annotations

import os
import random

import numpy as np

from gpu_pool.engine.choosing import Item, choose_batch
from gpu_pool.engine.packed import pack, per_item
from gpu_pool.model.port import Outputs
from gpu_pool.wire.protocol import Kind
from gpu_pool.wire.segment import Layout, Segment
from gpu_pool.wire.shared import EngineStats, ModelStats


def items(job_seq: int, *lengths: int, rerank: bool = False) -> list[Item]:
    return [Item(job_seq, i, n, rerank) for i, n in enumerate(lengths)]


def test_a_batch_takes_the_items_of_the_oldest_items_model_only():
    pending = items(1, 5, 7) + items(2, 9, rerank=True) + items(3, 4) + items(4, 6, rerank=True)
    batch = choose_batch(pending, max_jobs=8, max_tokens=1000)
    assert batch == [Item(1, 1, 7), Item(1, 0, 5), Item(3, 0, 4)]
    rest = [item for item in pending if item not in batch]
    assert choose_batch(rest, max_jobs=8, max_tokens=1000) == [Item(2, 0, 9, True), Item(4, 0, 6, True)]


def test_the_job_bound_counts_only_the_jobs_of_the_batchs_model():
    pending = items(1, 3, rerank=True) + items(2, 3) + items(3, 3) + items(4, 3, rerank=True) + items(5, 3, rerank=True)
    batch = choose_batch(pending, max_jobs=2, max_tokens=1000)
    assert {item.job_seq for item in batch} == {1, 4}  # the embedding jobs between are no candidates


def test_the_chooser_never_mixes_models_and_plans_every_item_once():
    rng = random.Random(5)
    pending = [item for seq in range(1, 60)
               for item in items(seq, *[rng.randint(1, 90) for _ in range(rng.randint(1, 4))],
                                 rerank=rng.random() < 0.5)]
    seen: list[Item] = []
    while pending:
        batch = choose_batch(pending, max_jobs=rng.randint(1, 6), max_tokens=rng.randint(16, 200))
        assert batch, "a non-empty queue always yields a batch"
        assert len({item.rerank for item in batch}) == 1, f"a pass of two models: {batch}"
        assert batch[0].rerank == pending[0].rerank, "the turn goes to the model of the oldest item"
        seen += batch
        pending = [item for item in pending if item not in batch]
    assert len(seen) == len(set(seen))


def test_a_rerank_segment_holds_the_pairs_and_one_float32_logit_each():
    regions = Layout(3, 40, 1024, Kind.RERANK).regions()
    assert list(regions) == ["lengths", "ids", "times", "logits"]
    offset, shape, dtype = regions["logits"]
    assert shape == (3,) and dtype == np.float32 and offset % 64 == 0
    segment = Segment.create(f"bgem3-test-rerank-{os.getpid()}", Layout(3, 40, 1024, Kind.RERANK))
    try:
        segment.arrays["logits"][:] = [1.5, -2.0, 0.25]
        np.testing.assert_array_equal(segment.arrays["logits"], np.array([1.5, -2.0, 0.25], dtype=np.float32))
    finally:
        segment.close()


def test_a_rerank_batchs_logits_are_cut_one_per_pair():
    batch_items = items(1, 4, 6, rerank=True) + items(2, 5, rerank=True)
    ids = [np.arange(n) for n in (4, 6, 5)]
    batch = pack(batch_items, ids, [Kind.RERANK] * 3)
    assert batch.kinds == Kind.RERANK
    rows = list(per_item(batch, Outputs(None, None, None, np.array([0.5, -1.0, 2.0], dtype=np.float32))))
    assert [row[:3] for row in rows] == [(None, None, None)] * 3
    assert [float(row[3]) for row in rows if row[3] is not None] == [0.5, -1.0, 2.0]


def test_an_embedding_batchs_rows_carry_no_logit():
    batch = pack(items(1, 3), [np.arange(3)], [Kind.DENSE])
    (row,) = per_item(batch, Outputs(np.ones((1, 4), dtype=np.float32), None, None))
    assert row[3] is None and row[0] is not None


def test_the_figures_of_each_model():
    stats = EngineStats(processed_requests=10, batches=6, batched_inputs=40, tokens=900, processing_seconds=3.0,
                        rerank_requests=4, rerank_batches=2, rerank_inputs=25, rerank_tokens=600,
                        rerank_processing_seconds=1.0)
    assert stats.model(rerank=True) == ModelStats(4, 2, 25, 600, 1.0)
    assert stats.model(rerank=False) == ModelStats(6, 4, 15, 300, 2.0)
