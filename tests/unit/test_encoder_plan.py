"""A pass's plan (gpu_pool/model/xlmr.py): row chunks and one layer's steps. Pure, on the CPU."""

from __future__ import annotations

import torch

from gpu_pool.model.attention import Block
from gpu_pool.model.xlmr import (
    AttentionOutput,
    AttentionPart,
    Chunk,
    FeedForwardDown,
    FeedForwardUp,
    QKVProjection,
    layer_steps,
    row_chunks,
)

PARTS = (AttentionPart(blocks=(Block(0, 6, 1, (0, 3)),)), AttentionPart(blocks=(Block(0, 6, 1, (3, 6)),)))


def test_rows_are_cut_into_equal_chunks_of_at_most_step_tokens():
    assert row_chunks(10, None) == ((0, 10),)
    assert row_chunks(10, 10) == ((0, 10),)
    assert row_chunks(10, 4) == ((0, 3), (3, 6), (6, 10))  # three chunks of 3-4, not 4, 4, 2
    assert row_chunks(8192, 1000) == tuple((8192 * i // 9, 8192 * (i + 1) // 9) for i in range(9))


def test_one_chunk_keeps_the_output_projection_in_the_last_attention_part():
    whole = Chunk(first=0, end=6, tokens=6)
    assert layer_steps([whole], PARTS) == (
        QKVProjection(chunk=whole), PARTS[0], AttentionPart(blocks=PARTS[1].blocks, then=AttentionOutput(chunk=whole)),
        FeedForwardUp(chunk=whole), FeedForwardDown(chunk=whole))


def test_several_chunks_run_each_product_per_chunk_and_the_feed_forward_chunk_by_chunk():
    one, two = Chunk(first=0, end=3, tokens=6), Chunk(first=3, end=6, tokens=6)
    assert layer_steps([one, two], PARTS[:1]) == (
        QKVProjection(chunk=one), QKVProjection(chunk=two), PARTS[0], AttentionOutput(chunk=one),
        AttentionOutput(chunk=two), FeedForwardUp(chunk=one), FeedForwardDown(chunk=one), FeedForwardUp(chunk=two),
        FeedForwardDown(chunk=two))


def test_a_chunk_fills_and_reads_its_rows_of_one_buffer_and_the_only_chunk_is_the_tensor():
    whole = Chunk(first=0, end=4, tokens=4)
    value = torch.ones(4, 2)
    assert whole.fill(None, value) is value
    first, last = Chunk(first=0, end=1, tokens=4), Chunk(first=1, end=4, tokens=4)
    buffer = first.fill(None, torch.zeros(1, 2))
    assert buffer.shape == (4, 2) and not first.last
    assert last.fill(buffer, torch.ones(3, 2)) is buffer and last.last
    assert buffer.sum(dim=1).tolist() == [0, 2, 2, 2]
    assert whole.of(value) is value and last.of(buffer).sum(dim=1).tolist() == [2, 2, 2]
