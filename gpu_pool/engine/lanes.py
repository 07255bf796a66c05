"""Two lanes on one device: how queries pass bulk work without starving it. Pure, tested alone.

- The idle device runs a waiting interactive batch first, but never two in a row while a
  bulk batch waits (``next_lane``), so bulk always gets its turn.
- A bulk pass runs in steps (a part of a layer each); between two steps a waiting
  interactive batch runs whole, as long as interactive work has taken less than its share of the time this
  bulk pass has run (``may_interleave``): bulk keeps ``bulk_share`` of the device (1: a
  bulk pass is never interrupted, and queries go first once it ends).
- Bulk passes are sized by time, not only tokens (``PassSizer``): the engine learns what a
  token costs in the longest kind of step and keeps that step under ``max_wait_s``, which
  bounds how long a query waits for its turn.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from gpu_pool.wire.protocol import Lane


def next_lane(interactive_waiting: bool, bulk_waiting: bool, last: Lane | None) -> Lane | None:
    """The lane of the next batch the idle device runs (None: nothing is ready)."""
    if interactive_waiting and not (bulk_waiting and last == Lane.INTERACTIVE):
        return Lane.INTERACTIVE
    if bulk_waiting:
        return Lane.BULK
    return None


def may_interleave(bulk_s: float, interactive_s: float, bulk_share: float) -> bool:
    """Whether an interactive batch may run between two steps of a bulk pass that has
    computed for ``bulk_s`` while interactive batches took ``interactive_s`` in its gaps."""
    return interactive_s < bulk_s * (1.0 - bulk_share) / bulk_share


def longest_step(step_seconds: Sequence[float], steps_per_layer: int) -> float:
    """The time of a pass's longest kind of step: the steps of a layer differ (on a CPU the
    query, key and value projection takes three quarters of a feed-forward half), and a query
    waits for the step under way, whichever it is. Each kind's median, so that a step slowed once by
    another process does not count as the kind's cost."""
    kinds = [step_seconds[kind::steps_per_layer] for kind in range(steps_per_layer)]
    return max((statistics.median(times) for times in kinds if times), default=0.0)


class PassSizer:
    """Learns from bulk passes (moving averages) the device's seconds per token, and those of
    the longest kind of step, and sizes bulk passes so that the longest step stays under
    ``max_wait_s``."""

    _WEIGHT = 0.2  # of each new pass in the average
    _MIN_TOKENS = 64  # smaller passes are mostly fixed costs: they teach nothing about the rate

    def __init__(self, max_wait_s: float, max_tokens: int) -> None:
        self.max_wait_s, self.max_tokens = max_wait_s, max_tokens
        self.seconds_per_token: float | None = None  # of a whole pass
        self.longest_step_seconds_per_token: float | None = None

    def observe(self, tokens: int, steps: int, seconds: float, longest_step_s: float = 0.0,
                step_tokens: int | None = None) -> None:
        """A pass of ``tokens`` in ``steps`` took ``seconds``, its longest kind of step
        ``longest_step_s`` over ``step_tokens`` rows (None: all the pass's; a step time of 0:
        unknown, as where steps are queued on a device and not timed one by one, and the
        average step stands for it)."""
        if tokens < self._MIN_TOKENS or steps <= 0 or seconds <= 0:
            return
        self.seconds_per_token = _moved(self.seconds_per_token, seconds / tokens, self._WEIGHT)
        longest = max(longest_step_s / min(tokens, step_tokens or tokens), seconds / steps / tokens)
        self.longest_step_seconds_per_token = _moved(self.longest_step_seconds_per_token, longest, self._WEIGHT)

    def budget(self) -> int:
        """Tokens in the next bulk pass: ``max_tokens`` until the rate is known."""
        if self.longest_step_seconds_per_token is None:
            return self.max_tokens
        by_time = int(self.max_wait_s / self.longest_step_seconds_per_token)
        return max(self._MIN_TOKENS, min(self.max_tokens, by_time))

    def tokens_per_second(self) -> float | None:
        """Whole passes' throughput at the learned rate, for /stats."""
        return None if self.seconds_per_token is None else 1.0 / self.seconds_per_token


def _moved(average: float | None, value: float, weight: float) -> float:
    return value if average is None else average + weight * (value - average)
