"""The score definitions on hand-computed examples, and a score job fed in any order."""

from __future__ import annotations

import os
from itertools import permutations

import numpy as np
import pytest

from gpu_pool import m3math as scoring
from gpu_pool.engine.score_job import ActiveScoreJob
from gpu_pool.m3math import Vectors
from gpu_pool.wire import protocol
from gpu_pool.wire.protocol import SCORE_KINDS, SCORE_MODES, ScoreJob
from gpu_pool.wire.segment import Layout, Segment
from gpu_pool.wire.segment_pool import EngineMappings

UNUSED = np.array([0, 1, 2, 3], dtype=np.int32)


def vectors(dense=(1.0, 0.0), lexical=None, colbert=((1.0, 0.0),)) -> Vectors:
    lexical = lexical or {}
    ids = np.array(sorted(lexical), dtype=np.int32)
    return Vectors(np.array(dense, dtype=np.float32), ids,
                   np.array([lexical[i] for i in sorted(lexical)], dtype=np.float32),
                   np.array(colbert, dtype=np.float32).reshape(-1, len(dense)))


def test_lexical_weights_drop_special_tokens_and_keep_the_largest_weight():
    ids = np.array([0, 7, 5, 7, 9, 3, 2], dtype=np.int32)
    weights = np.array([0.9, 0.1, 0.4, 0.3, 0.0, 0.8, 0.7], dtype=np.float32)
    kept_ids, kept = scoring.lexical_weights(ids, weights, UNUSED)
    assert kept_ids.tolist() == [5, 7]  # 9 has weight 0; 0, 3 and 2 are special
    assert kept.tolist() == pytest.approx([0.4, 0.3])


def test_dense_score_is_the_dot_product():
    query, document = vectors(dense=(0.6, 0.8)), vectors(dense=(0.8, 0.6))
    assert scoring.dense_score(query, document) == pytest.approx(0.96)


def test_sparse_score_sums_the_shared_ids():
    query = vectors(lexical={5: 0.5, 7: 0.2, 11: 0.3})
    document = vectors(lexical={5: 0.4, 9: 1.0, 11: 0.5})
    assert scoring.sparse_score(query, document) == pytest.approx(0.5 * 0.4 + 0.3 * 0.5)
    assert scoring.sparse_score(query, vectors(lexical={9: 1.0})) == 0.0


def test_colbert_score_averages_each_query_rows_best_match():
    query = vectors(colbert=((1.0, 0.0), (0.0, 1.0)))
    document = vectors(colbert=((0.6, 0.8), (-1.0, 0.0), (0.8, -0.6)))
    # row 1: max(0.6, -1, 0.8) = 0.8; row 2: max(0.8, 0, -0.6) = 0.8
    assert scoring.colbert_score(query, document) == pytest.approx(0.8)


def test_colbert_best_match_may_be_negative_no_padding_floor():
    query = vectors(colbert=((1.0, 0.0), (0.0, 1.0)))
    document = vectors(colbert=((-0.6, -0.8),))
    # A zero-padded row would have lifted both maxima to 0; the document's own rows give -0.6 and -0.8.
    assert scoring.colbert_score(query, document) == pytest.approx(-0.7)


def test_colbert_score_of_a_text_without_rows_is_zero():
    empty = vectors(colbert=np.zeros((0, 2)))
    assert scoring.colbert_score(empty, vectors()) == 0.0
    assert scoring.colbert_score(vectors(), empty) == 0.0


def test_combine_gives_the_weighted_means_of_compute_score():
    raw = np.array([[0.8, 0.1, 0.6], [0.2, 0.0, 0.4]])
    table = scoring.combine(raw, (0.4, 0.2, 0.4))
    assert table.dtype == np.float32 and table.shape == (2, len(SCORE_MODES))
    assert table[0].tolist() == pytest.approx([0.8, 0.1, 0.6, (0.1 * 0.2 + 0.8 * 0.4) / 0.6,
                                               0.6 * 0.4 + 0.1 * 0.2 + 0.8 * 0.4])
    assert scoring.combine(raw, (1.0, 1.0, 1.0))[1].tolist() == pytest.approx([0.2, 0.0, 0.4, 0.1, 0.2])


def test_score_job_message_is_small():
    job = ScoreJob(2**40 + 7, 3, "bgem3-123-456-789012", 257, 8192 * 257, SCORE_KINDS, (0.4, 0.2, 0.4),
                   (0, 1, 2, 3))
    data = protocol.encode(job)
    assert len(data) + 4 <= 512 and protocol.decode(data) == job
    assert isinstance(job, protocol.Job)


def test_score_layout_holds_only_ids_and_scores():
    regions = Layout(n_inputs=4, n_tokens=20, dim=8, kinds=SCORE_KINDS).regions()
    assert set(regions) == {"lengths", "ids", "times", "scores"}
    assert regions["scores"][1] == (3, len(SCORE_MODES))


# -- a score job inside the engine, fed its inputs in every order ------------------------

DIM = 4
LENGTHS = [4, 3, 5, 2]  # the query, then three documents
IDS = [np.array([0, 7, 8, 2]), np.array([0, 7, 2]), np.array([0, 9, 8, 8, 2]), np.array([0, 2])]


def outputs(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    dense = rng.normal(size=DIM).astype(np.float32)
    colbert = rng.normal(size=(LENGTHS[index] - 1, DIM)).astype(np.float32)
    return (dense / np.linalg.norm(dense), rng.uniform(0, 1, LENGTHS[index]).astype(np.float32),
            colbert / np.linalg.norm(colbert, axis=1, keepdims=True))


def expected_table(weights) -> np.ndarray:
    def vec(i):
        dense, sparse, colbert = outputs(i)
        return Vectors(dense, *scoring.lexical_weights(IDS[i].astype(np.int32), sparse, UNUSED), colbert)

    raw = np.array([scoring.raw_scores(vec(0), vec(i)) for i in range(1, len(IDS))])
    return scoring.combine(raw, weights)


@pytest.mark.parametrize("order", list(permutations(range(len(IDS))))[::5])
def test_score_job_gives_the_same_scores_whatever_the_order_of_its_inputs(order):
    weights = (0.4, 0.2, 0.4)
    name = f"bgem3-test-{os.getpid()}-score"
    layout = Layout(len(IDS), sum(LENGTHS), DIM, SCORE_KINDS)
    with Segment.create(name, layout) as owner:
        owner.arrays["lengths"][:] = LENGTHS
        owner.arrays["ids"][:] = np.concatenate(IDS)
        job = ScoreJob(1, 0, name, len(IDS), sum(LENGTHS), SCORE_KINDS, weights, tuple(UNUSED.tolist()))
        active = ActiveScoreJob.attach(job, 1, DIM, EngineMappings())
        for index in order:
            active.write(index, *outputs(index))
        assert active.remaining == 0 and not active.waiting
        active.segment.close()
        np.testing.assert_allclose(owner.arrays["scores"], expected_table(weights), atol=1e-6)
