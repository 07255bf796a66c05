"""A pass's plan (gpu_pool/model/xlmr.py): row chunks and one layer's steps. Pure, on the CPU."""

from __future__ import annotations

from gpu_pool.model.xlmr import ATTEND, DOWN, OUT, QKV, UP, layer_steps, row_chunks


def test_rows_are_cut_into_equal_chunks_of_at_most_step_tokens():
    assert row_chunks(10, None) == ((0, 10),)
    assert row_chunks(10, 10) == ((0, 10),)
    assert row_chunks(10, 4) == ((0, 3), (3, 6), (6, 10))  # three chunks of 3-4, not 4, 4, 2
    assert row_chunks(8192, 1000) == tuple((8192 * i // 9, 8192 * (i + 1) // 9) for i in range(9))


def test_one_chunk_keeps_the_output_projection_in_the_last_attention_part():
    assert layer_steps(1, 2) == ((QKV, 0), (ATTEND, 0), (ATTEND, 1), (UP, 0), (DOWN, 0))


def test_several_chunks_run_each_product_per_chunk_and_the_feed_forward_chunk_by_chunk():
    assert layer_steps(2, 1) == ((QKV, 0), (QKV, 1), (ATTEND, 0), (OUT, 0), (OUT, 1),
                                 (UP, 0), (DOWN, 0), (UP, 1), (DOWN, 1))
