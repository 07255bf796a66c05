"""Attention over packed texts: the lengths-derived inputs, the path choice, and the varlen path's
plumbing checked on the CPU with a reference kernel (the real flash kernel runs on CUDA only: the
``gpu`` tests below, run by bench/gpu/check.sh on the GPU machine). The encoder's use of both
paths: tests/integration/test_model.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpu_pool.model import attention
from gpu_pool.model.attention import PER_LENGTH, VARLEN, Block, Spans

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def reference_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int) -> torch.Tensor:
    """What a varlen kernel computes, one text at a time: [tokens, heads, dim] in and out."""
    assert q.shape == k.shape == v.shape and q.dim() == 3 and cu.dtype == torch.int32
    assert longest == int((cu[1:] - cu[:-1]).max())
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for start, end in itertools.pairwise(bounds):
        # [length, heads, dim] -> [heads, length, dim]
        out[start:end] = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1), k[start:end].transpose(0, 1), v[start:end].transpose(0, 1)).transpose(0, 1)
    return out


def test_cu_seqlens_are_where_each_text_starts_then_the_total():
    cu = attention.cu_seqlens([3, 5, 2])
    assert cu.dtype == np.int32
    assert cu.tolist() == [0, 3, 8, 10]
    assert attention.cu_seqlens([]).tolist() == [0]


def test_spans_hold_one_part_of_blocks_of_equal_lengths_and_the_longest_length():
    spans = Spans([7, 7, 4, 4, 4, 1])
    assert spans == [7, 7, 4, 4, 4, 1]  # still the plain list of lengths
    assert spans.parts == [[Block(0, 7, 2, (0, 7)), Block(14, 4, 3, (0, 4)), Block(26, 1, 1, (0, 1))]]
    assert attention.attention_parts([2, 2, 5, 2], None) == [[  # runs, not groups
        Block(0, 2, 2, (0, 2)), Block(4, 5, 1, (0, 5)), Block(9, 2, 1, (0, 2))]]
    assert attention.attention_parts([], None) == [[]]
    assert spans.max_length == 7
    assert spans.cu_seqlens is None


def test_attention_parts_keep_to_their_scores_cutting_long_texts_by_rows():
    # 100 scores a part: the 4-token texts fit whole (16 each), the 20-token text does not
    # (400): it is cut into rows of 5 (100 scores), the first rows in the room left.
    parts = attention.attention_parts([4, 4, 20, 4], 100)
    assert parts == [
        [Block(0, 4, 2, (0, 4)), Block(8, 20, 1, (0, 3))],
        [Block(8, 20, 1, (3, 8))],
        [Block(8, 20, 1, (8, 13))],
        [Block(8, 20, 1, (13, 18))],
        [Block(8, 20, 1, (18, 20)), Block(28, 4, 1, (0, 4))],
    ]
    # A text that fits whole in a fresh part is not cut to fill the last one.
    assert attention.attention_parts([8, 8], 100) == [[Block(0, 8, 1, (0, 8))], [Block(8, 8, 1, (0, 8))]]


@pytest.mark.parametrize("lengths, scores", [([9, 9, 30, 3, 3, 1], 50), ([40], 40), ([5, 12], 1)])
def test_attention_in_parts_gives_attention_whole(lengths, scores):
    heads = 2
    qkv = torch.randn(sum(lengths), 3 * heads * 8)
    whole = attention.per_length(qkv, Spans(lengths), heads)
    parted = Spans(lengths, part_scores=scores)
    assert len(parted.parts) > 1
    context = torch.full_like(whole, float("nan"))
    for blocks in parted.parts:
        attention.attend(qkv, context, blocks, heads)
    torch.testing.assert_close(context, whole)  # every row written, each as attention over its whole text


@pytest.mark.parametrize("device, dtype, varlen_allowed", [
    ("cpu", torch.float32, False), ("cpu", torch.bfloat16, False), ("cuda", torch.float32, False),
    ("cuda", torch.float16, True), ("cuda", torch.bfloat16, True)])
def test_varlen_is_tried_on_cuda_in_half_precision_only(device, dtype, varlen_allowed):
    assert (attention.wants_varlen(device, dtype) == "") is varlen_allowed


def test_the_cpu_keeps_the_per_length_path():
    choice, kernel = attention.select(torch.device("cpu"), torch.bfloat16)
    assert (choice.path, kernel) == (PER_LENGTH, None)
    assert "cpu" in choice.reason


def test_cuda_float32_keeps_the_per_length_path():
    choice, kernel = attention.select(torch.device("cuda:0"), torch.float32)  # decided before touching a device
    assert (choice.path, kernel) == (PER_LENGTH, None)
    assert "float16/bfloat16 only" in choice.reason


def test_the_first_kernel_that_works_is_chosen():
    def broken(*args):
        raise RuntimeError("no kernel image")

    errors = {broken: "RuntimeError: no kernel image", reference_kernel: ""}
    choice, kernel = attention.choose([("flash", broken), ("public", reference_kernel)], errors.__getitem__)
    assert (choice.path, choice.kernel_name, kernel) == (VARLEN, "public", reference_kernel)


def test_without_a_working_kernel_the_per_length_path_stays_and_says_why():
    choice, kernel = attention.choose([("flash", reference_kernel)], lambda kernel: "differs by 0.5")
    assert (choice.path, kernel) == (PER_LENGTH, None)
    assert "flash: differs by 0.5" in choice.reason
    choice, kernel = attention.choose([], lambda kernel: "")
    assert choice.path == PER_LENGTH and "no varlen attention kernel" in choice.reason


def test_the_kernel_check_accepts_a_right_kernel_and_refuses_a_wrong_one():
    assert attention.kernel_error(reference_kernel, torch.device("cpu"), torch.float32) == ""
    assert "differs" in attention.kernel_error(lambda q, k, v, cu, n: v, torch.device("cpu"), torch.float32)

    def raises(*args):
        raise NotImplementedError("no CPU kernel")

    assert attention.kernel_error(raises, torch.device("cpu"), torch.float32) == "NotImplementedError: no CPU kernel"


def test_the_installed_torch_offers_a_varlen_kernel():
    names = [name for name, _ in attention.kernels()]
    assert "aten._flash_attention_forward" in names


@pytest.mark.parametrize("lengths", [[9, 9, 5, 3, 3, 3, 1], [12], [4, 4, 4]])
def test_varlen_gives_what_per_length_gives(lengths):
    heads, torch_rng = 2, torch.Generator().manual_seed(0)
    qkv = torch.randn(sum(lengths), 3 * heads * 8, generator=torch_rng)
    spans = Spans(lengths, torch.from_numpy(attention.cu_seqlens(lengths)))
    got = attention.varlen(qkv, spans, heads, reference_kernel)
    torch.testing.assert_close(got, attention.per_length(qkv, spans, heads))


def test_varlen_needs_cu_seqlens():
    with pytest.raises(ValueError, match="cu_seqlens"):
        attention.varlen(torch.zeros(3, 12), Spans([3]), 2, reference_kernel)


# -- on the GPU machine ------------------------------------------------------------


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_chooses_a_varlen_kernel_that_matches_per_length(dtype):
    device = torch.device("cuda:0")
    choice, kernel = attention.select(device, dtype)
    assert choice.path == VARLEN, choice.reason
    lengths, heads = [300, 300, 128, 77, 77, 5, 1], 16
    qkv = torch.randn(sum(lengths), 3 * heads * 64, device=device, dtype=dtype)
    spans = Spans(lengths, torch.from_numpy(attention.cu_seqlens(lengths)).to(device))
    got = attention.varlen(qkv, spans, heads, kernel)
    torch.testing.assert_close(got, attention.per_length(qkv, spans, heads), atol=2e-2, rtol=2e-2)
