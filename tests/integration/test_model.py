"""The engine's model (``M3Model``) in this process on the tiny model: its attention paths give
the same outputs, a pass plans once, and its outputs come back as asked (half precision,
asynchronously). The ``gpu`` tests run on the GPU machine (bench/gpu/check.sh)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_pool.model import attention
from gpu_pool.model.attention import PER_LENGTH, VARLEN, Block, Spans
from gpu_pool.model.graphs import EncoderGraphs
from gpu_pool.model.m3 import M3Model
from gpu_pool.wire.protocol import Kind
from testkit.passes import forward
from testkit.simdevice import SimDevice

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
IDS, LENGTHS = np.array([0, 9, 8, 2, 0, 7, 2], dtype=np.int64), np.array([4, 3], dtype=np.int64)


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> M3Model:
    return M3Model(tiny_model, torch.device("cpu"), torch.float32)


def texts(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = [np.concatenate(([0], rng.integers(4, 1000, n - 2), [2])) for n in lengths]
    return np.concatenate(ids).astype(np.int64), np.array(lengths, dtype=np.int64)


def per_length_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                      longest: int) -> torch.Tensor:
    """A varlen kernel for the CPU, made of the per-length path: [tokens, heads, dim] in and out."""
    tokens, heads = q.shape[:2]
    qkv = torch.stack([q, k, v], dim=1).reshape(tokens, -1)
    return attention.per_length(qkv, Spans((cu[1:] - cu[:-1]).tolist()), heads).view(tokens, heads, -1)


def run(model: M3Model, ids: np.ndarray, lengths: np.ndarray, step_tokens: int | None) -> dict[str, np.ndarray]:
    got = forward(model, ids, lengths, ALL, np.arange(len(lengths)), step_tokens)
    return {"dense": got.dense, "sparse": got.sparse, "colbert": got.colbert}


@pytest.mark.parametrize("step_tokens", [None, 37])
def test_the_encoder_with_a_varlen_kernel_gives_the_per_length_outputs(tiny_model, step_tokens):
    model = M3Model(tiny_model, torch.device("cpu"), torch.float32)
    ids, lengths = texts([30, 30, 17, 9, 9, 4])
    expected = run(model, ids, lengths, step_tokens)
    model.encoder.kernel = per_length_kernel  # where select() installs a flash kernel on CUDA in half precision
    got = run(model, ids, lengths, step_tokens)
    for name in ("dense", "sparse", "colbert"):
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5)


def test_a_pass_builds_its_spans_once(model):
    ids, lengths = texts([12, 12, 5])
    running = model.start(ids, lengths, Kind.DENSE, np.array([], dtype=np.int64))
    assert isinstance(running._plan.spans, Spans)
    assert running._plan.spans.parts == [[Block(0, 12, 2, (0, 12)), Block(24, 5, 1, (0, 5))]]


def test_half_outputs_are_the_float32_vectors_rounded_once(model):
    full = forward(model, IDS, LENGTHS, ALL, np.array([0, 1]))
    half = forward(model, IDS, LENGTHS, ALL | Kind.HALF, np.array([0, 1]))
    assert half.dense.dtype == half.colbert.dtype == np.float16
    np.testing.assert_array_equal(half.dense, full.dense.astype(np.float16))
    np.testing.assert_array_equal(half.colbert, full.colbert.astype(np.float16))
    np.testing.assert_array_equal(half.sparse, full.sparse)  # the weights stay float32


def test_sparse_weights_leave_a_float16_model_as_float32(tiny_model):
    """A GPU runs float16 (DTYPE=auto): the weights feed sums (a score job's lexical score) that
    float16 would round, so they alone come back float32; the vectors stay what was asked."""
    half = M3Model(tiny_model, torch.device("cpu"), torch.float16)
    got = forward(half, IDS, LENGTHS, ALL | Kind.HALF, np.array([0, 1]))
    assert got.sparse.dtype == np.float32
    assert got.dense.dtype == got.colbert.dtype == np.float16


def test_outputs_async_gives_the_outputs_when_the_next_pass_ran_before_the_wait(model):
    expected = forward(model, IDS, LENGTHS, ALL, np.array([1]))
    running = model.start(IDS, LENGTHS, ALL, np.array([1]))
    while not running.step():
        pass
    pending = running.outputs_async()
    forward(model, IDS[::-1].copy(), LENGTHS[::-1].copy(), ALL, np.array([0, 1]))  # as the engine runs the next pass
    got = pending.wait()
    for name in ("dense", "sparse", "colbert"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    assert got.colbert.shape == (2, model.dim)
    assert 0 < pending.seconds() < 10  # the pass's time, from its start to its heads


def test_finish_runs_the_steps_left_as_step_by_step_would(model):
    ids, lengths = texts([12, 12, 5])
    stepwise = model.start(ids, lengths, ALL, np.arange(3))
    while not stepwise.step():
        pass
    finished = model.start(ids, lengths, ALL, np.arange(3))
    finished.step()  # begun step by step (as a bulk pass), finished in a row
    finished.finish()
    assert finished.done == finished.steps == stepwise.steps
    expected, got = stepwise.outputs_async().wait(), finished.outputs_async().wait()
    for name in ("dense", "sparse", "colbert"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))


def test_outputs_before_the_last_step_are_refused(model):
    running = model.start(IDS, LENGTHS, ALL, np.array([1]))
    running.step()
    with pytest.raises(RuntimeError, match=f"after 1 of the pass's {running.steps} steps"):
        running.outputs_async()


# Passes of several sizes for graphs of 64 and 128 tokens: a few texts, one, the most texts a
# 64-token graph takes, a pass too large for either, and a text longer than a graph takes.
GRAPHED = [[30, 17, 9], [4], [2] * 32, [60, 60], [65]]
EAGER = [[100, 100], [129]]


def graph_outputs(model: M3Model) -> list[dict[str, np.ndarray]]:
    """Each pass of GRAPHED and EAGER run whole; asserts which replayed a graph."""
    outputs = []
    for lengths in GRAPHED + EAGER:
        ids, lens = texts(lengths)
        running = model.start(ids, lens, ALL, np.arange(len(lens)))
        assert (running.done == running.steps) == (model.graphs is not None and lengths in GRAPHED), lengths
        running.finish()
        got = running.outputs_async().wait()
        outputs.append({"dense": got.dense, "sparse": got.sparse, "colbert": got.colbert})
    return outputs


def test_a_replayed_graph_gives_the_eager_pass_outputs(tiny_model):
    """gpu_pool/model/graphs.py on the CPU: recorded by the simulated device (a replay runs the
    recorded work again over the same buffers), on a varlen kernel made of the per-length path.
    The buffers are reused pass after pass, padded each time."""
    model = M3Model(tiny_model, torch.device("cpu"), torch.float32)
    model.encoder.kernel = per_length_kernel
    eager = graph_outputs(model)
    model.graphs = EncoderGraphs(model.encoder, SimDevice(), model.pad_id, sizes=(64, 128))
    for got, expected in zip(graph_outputs(model), eager, strict=True):
        for name in ("dense", "sparse", "colbert"):
            np.testing.assert_allclose(got[name], expected[name], atol=1e-5)


# -- on the GPU machine ------------------------------------------------------------


@pytest.mark.gpu
@CUDA
def test_cuda_graphs_give_the_eager_pass_outputs(tiny_model):
    model = M3Model(tiny_model, torch.device("cuda:0"), torch.float16)
    assert model.graphs is not None, "CUDA graphs were not recorded (the engine's log says why)"
    model.graphs.graphs = [graph for graph in model.graphs.graphs if graph.tokens <= 128]  # as GRAPHED expects
    graphed = graph_outputs(model)
    model.graphs = None
    for got, expected in zip(graphed, graph_outputs(model), strict=True):
        assert (got["dense"] * expected["dense"]).sum(-1).min() >= 0.999
        np.testing.assert_allclose(got["sparse"], expected["sparse"], atol=2e-2)
        assert (got["colbert"] * expected["colbert"]).sum(-1).min() >= 0.999


@pytest.mark.gpu
@CUDA
def test_cuda_pass_outputs_equal_the_cpu_pass_in_float32(tiny_model, model):
    cpu = forward(model, IDS, LENGTHS, ALL, np.array([0, 1]))
    cuda = forward(M3Model(tiny_model, torch.device("cuda:0"), torch.float32), IDS, LENGTHS, ALL, np.array([0, 1]))
    for name in ("dense", "sparse", "colbert"):
        np.testing.assert_allclose(getattr(cuda, name), getattr(cpu, name), atol=1e-4)


@pytest.mark.gpu
@CUDA
def test_cuda_float16_varlen_and_per_length_models_agree(tiny_model):
    device = torch.device("cuda:0")
    fast = M3Model(tiny_model, device, torch.float16)
    assert fast.attention.path == VARLEN, fast.attention.reason
    slow = M3Model(tiny_model, device, torch.float16, attention_path=PER_LENGTH)
    ids, lengths = texts([40, 40, 33, 9, 2])
    a = forward(fast, ids, lengths, ALL, np.arange(len(lengths)))
    b = forward(slow, ids, lengths, ALL, np.arange(len(lengths)))
    cosine = (a.dense * b.dense).sum(-1)
    assert cosine.min() >= 0.999
    np.testing.assert_allclose(a.sparse, b.sparse, atol=2e-2)
    assert (a.colbert * b.colbert).sum(-1).mean() >= 0.999
