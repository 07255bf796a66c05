"""The encoder of a small pass as one recorded graph (CUDA graphs), on the varlen path.

Why: a pass queues some 300 kernels (24 layers of products, norms, GELU and attention), each
through Python and torch's dispatcher. On the H200 a lone 16-token query's pass took 6-7.5 ms
of the engine's time for well under 1 ms of the GPU's, and 64 clients' short queries kept the
engine's one core busy at 2,200-2,600 requests/s (bench/results/gpu-check-2026-12-04-*.json):
a small pass is bound by its host time. A graph queues the same kernels with one call.

How: one graph per size, from ``GRAPH_TOKENS[0]`` to ``GRAPH_TOKENS[-1]`` tokens, recorded at
load over fixed buffers: the token ids and positions of ``tokens`` rows and the ``cu_seqlens``
of up to ``tokens // 2`` texts (a text has at least its two special tokens). A pass fits the
smallest size that holds its tokens when no text is longer than ``GRAPH_LONGEST`` (the most the
flash kernel is told to expect; the varlen kernel takes it as a host number, fixed at capture).
Its ids go into the buffers padded: pad ids past the pass's tokens, and its last ``cu_seqlens``
entry repeated, so the extra texts are empty and the padding rows belong to none (attention
leaves them unwritten; every other step works row by row, and the heads read the pass's own
rows only). Only the varlen path: the per-length path's blocks are host numbers of each pass.

Only passes that run whole (interactive ones) replay a graph: a bulk pass keeps its steps, so
that a query can run between them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gpu_pool.model.device import Accelerator
from gpu_pool.model.xlmr import PackedEncoder, State

# The sizes recorded. From about 4,096 tokens a pass's kernels take the H200 as long as its
# host takes to queue them (~6 ms), and the host runs ahead of them.
GRAPH_TOKENS = (64, 128, 256, 512, 1024, 2048)
GRAPH_LONGEST = 128  # the longest text a graph takes (INTERACTIVE_MAX_TOKENS' default)


class EncoderGraph:
    """The encoder over ``tokens`` rows (at most ``tokens // 2`` texts), recorded once."""

    def __init__(self, encoder: PackedEncoder, accelerator: Accelerator, tokens: int, pad_id: int, pool: object,
                 longest: int = GRAPH_LONGEST) -> None:
        self.tokens, self.texts, self.pad_id = tokens, tokens // 2, pad_id
        self.longest = min(longest, tokens)
        device = encoder.word.device
        # ids, then positions, then cu_seqlens: one buffer, filled by one copy a pass.
        self.inputs = torch.full((2 * tokens + self.texts + 1,), pad_id, dtype=torch.int64, device=device)
        self.inputs[2 * tokens:] = 0
        self.steps_per_layer = 0  # the eager pass's, for the pass sizer (set by the capture)
        self.replay, self.hidden = accelerator.capture(lambda: self._encode(encoder), pool)

    def _encode(self, encoder: PackedEncoder) -> torch.Tensor:
        ids, positions = self.inputs[:self.tokens], self.inputs[self.tokens:2 * self.tokens]
        cu_seqlens = self.inputs[2 * self.tokens:].to(torch.int32)
        # Host lengths that sum to the buffers' rows, longest first: the plan takes its one
        # chunk and the kernel's longest length from them; the kernel reads the texts from cu_seqlens.
        lengths = [self.longest] * (self.tokens // self.longest) + [self.tokens % self.longest] * (
            self.tokens % self.longest > 0)
        plan = encoder.plan(lengths, cu_seqlens=cu_seqlens)
        self.steps_per_layer = len(plan.steps)
        state = State(hidden=encoder.embed(ids, positions))
        for layer in range(len(encoder.layers)):
            for step in range(len(plan.steps)):
                state = encoder.run_step(layer, step, state, plan)
        assert state.hidden is not None, "a layer's last step leaves its output"
        return state.hidden

    def fits(self, tokens: int, texts: int, longest: int) -> bool:
        return tokens <= self.tokens and texts <= self.texts and longest <= self.longest

    def host_inputs(self, ids: np.ndarray, positions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """What the buffers get for a pass: its ids and positions padded, its cu_seqlens with the
        empty texts after them."""
        n, tokens = len(ids), self.tokens
        inputs = np.full(2 * tokens + self.texts + 1, self.pad_id, dtype=np.int64)
        inputs[:n], inputs[tokens:tokens + n] = ids, positions
        inputs[2 * tokens] = 0
        inputs[2 * tokens + 1:] = n
        inputs[2 * tokens + 1:2 * tokens + 1 + len(lengths)] = np.cumsum(lengths)
        return inputs

    def run(self, inputs: torch.Tensor, tokens: int) -> torch.Tensor:
        """Replay over ``inputs`` (``host_inputs``, on the device): the last layer's hidden
        states of the pass's ``tokens`` rows, valid until the next replay is queued after them."""
        self.inputs.copy_(inputs, non_blocking=True)
        self.replay()
        return self.hidden[:tokens]


class EncoderGraphs:
    """A graph per size in ``sizes``, and which one a pass fits."""

    def __init__(self, encoder: PackedEncoder, accelerator: Accelerator, pad_id: int,
                 sizes: Sequence[int] = GRAPH_TOKENS) -> None:
        pool = accelerator.graph_pool()
        # Largest first: the smaller ones' memory then comes out of the pool it left.
        graphs = [EncoderGraph(encoder, accelerator, size, pad_id, pool) for size in sorted(sizes, reverse=True)]
        self.graphs = graphs[::-1]

    def fitting(self, lengths: np.ndarray) -> EncoderGraph | None:
        tokens, longest = int(lengths.sum()), int(lengths.max(initial=0))
        return next((graph for graph in self.graphs if graph.fits(tokens, len(lengths), longest)), None)
