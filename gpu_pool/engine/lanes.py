"""Two lanes on one device: how queries pass bulk work without starving it. Pure, tested alone.

- The idle device runs a waiting interactive batch first, but never two in a row while a
  bulk batch waits (``next_lane``), so bulk always gets its turn.
- A bulk pass runs in steps (a third of a layer each); between two steps a waiting
  interactive batch runs whole, as long as interactive work has taken less than its share of the time this
  bulk pass has run (``may_interleave``): bulk keeps ``bulk_share`` of the device (1: a
  bulk pass is never interrupted, and queries go first once it ends).
- Bulk passes are sized by time, not only tokens (``PassSizer``): the engine learns what a
  token costs per step and keeps one step under ``max_wait_s``, which bounds how long a
  query waits for its turn.
"""

from __future__ import annotations

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


class PassSizer:
    """Learns the device's seconds per token and step from bulk passes (a moving average),
    and sizes bulk passes so that one step stays under ``max_wait_s``."""

    _WEIGHT = 0.2  # of each new pass in the average
    _MIN_TOKENS = 64  # smaller passes are mostly fixed costs: they teach nothing about the rate

    def __init__(self, max_wait_s: float, max_tokens: int) -> None:
        self.max_wait_s, self.max_tokens = max_wait_s, max_tokens
        self.seconds_per_token_step: float | None = None

    def observe(self, tokens: int, steps: int, seconds: float) -> None:
        if tokens < self._MIN_TOKENS or steps <= 0 or seconds <= 0:
            return
        rate = seconds / (tokens * steps)
        known = self.seconds_per_token_step
        self.seconds_per_token_step = rate if known is None else known + self._WEIGHT * (rate - known)

    def budget(self) -> int:
        """Tokens in the next bulk pass: ``max_tokens`` until the rate is known."""
        if self.seconds_per_token_step is None:
            return self.max_tokens
        by_time = int(self.max_wait_s / self.seconds_per_token_step)
        return max(self._MIN_TOKENS, min(self.max_tokens, by_time))

    def tokens_per_second(self, steps: int) -> float | None:
        """Whole passes' throughput at the learned rate, for /stats."""
        if self.seconds_per_token_step is None or steps <= 0:
            return None
        return 1.0 / (self.seconds_per_token_step * steps)
