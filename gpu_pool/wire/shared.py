"""Counters and state in shared memory, created by the master before any fork.

Each value has exactly one writer at a time, so no cross-process lock is needed
(a process killed while holding such a lock would wedge every other one):

- ``state``, ``generation``, ``dim``, ``info``: the engine while it runs, the master's
  supervisor while it is dead;
- ``in_flight[slot]``: the web worker in that slot (the master zeroes it when
  the worker dies);
- ``stats``: the engine.
"""

from __future__ import annotations

import enum
import json
from multiprocessing.context import BaseContext

STAT_FIELDS = (
    "processed_requests",
    "failed_requests",
    "dropped_requests",  # timed out or cancelled before their pass began
    "batches",
    "batched_requests",
    "batched_inputs",
    "tokens",
    "processing_seconds",
    "preemptions",  # interactive passes run between the layers of a bulk pass
    # Per lane: requests answered, and the sums of their waits (arrival to first pass) and latencies.
    "interactive_requests",
    "interactive_wait_seconds",
    "interactive_latency_seconds",
    "bulk_requests",
    "bulk_wait_seconds",
    "bulk_latency_seconds",
    # Gauges, set rather than added: jobs waiting for their first pass, and the pass sizing.
    "interactive_queue",
    "bulk_queue",
    "tokens_per_second",
    "bulk_pass_tokens",
)
_INFO_BYTES = 512


class EngineState(enum.IntEnum):
    LOADING = 0
    READY = 1
    UNAVAILABLE = 2  # dead or restarting
    STOPPED = 3


class EngineShared:
    def __init__(self, ctx: BaseContext, n_slots: int) -> None:
        self.state = ctx.RawValue("i", EngineState.LOADING)
        self.generation = ctx.RawValue("i", 0)
        self.restarts = ctx.RawValue("i", 0)
        self.dim = ctx.RawValue("i", 0)  # the model's vector size, which sizes every segment
        self.in_flight = ctx.RawArray("q", n_slots)
        self.stats = ctx.RawArray("d", len(STAT_FIELDS))
        self._info = ctx.RawArray("c", _INFO_BYTES)

    def pending(self) -> int:
        return sum(self.in_flight)

    def add_stats(self, **deltas: float) -> None:
        for name, delta in deltas.items():
            self.stats[STAT_FIELDS.index(name)] += delta

    def set_stats(self, **values: float) -> None:
        for name, value in values.items():
            self.stats[STAT_FIELDS.index(name)] = value

    def stats_dict(self) -> dict[str, float]:
        return dict(zip(STAT_FIELDS, self.stats[:], strict=True))

    def set_info(self, info: dict[str, object]) -> None:
        data = json.dumps(info).encode()[: _INFO_BYTES - 1]
        self._info.value = data

    def info(self) -> dict[str, object]:
        raw = self._info.value
        return json.loads(raw) if raw else {}
