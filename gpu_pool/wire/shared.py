"""Counters and state in shared memory, created by the master before any fork.

Each value has exactly one writer at a time, so no cross-process lock is needed
(a process killed while holding such a lock would wedge every other one):

- ``state``, ``generation``, ``dim``, ``info``: the engine while it runs, the master's
  supervisor while it is dead;
- ``in_flight[slot]``: the web worker in that slot (the master zeroes it when
  the worker dies);
- ``stats``: the engine, read back by the web side as one ``EngineStats``.
"""

from __future__ import annotations

import enum
import json
import threading
from dataclasses import dataclass, field, fields
from multiprocessing.context import BaseContext

from gpu_pool.wire.protocol import Lane

# The engine's info (JSON): its device and dtype, and the cross-encoder's name, folder and limits.
_INFO_BYTES = 8192
_GAUGE = {"gauge": True}  # set to what it is now, not added to


@dataclass(frozen=True)
class LaneStats:
    """One lane's figures out of ``EngineStats``."""

    queue: int  # jobs waiting for their first pass
    requests: int  # answered
    wait_seconds: float  # summed: arrival in the engine to first pass
    latency_seconds: float  # summed: arrival in the engine to the answer


@dataclass(frozen=True)
class ModelStats:
    """One model's figures out of ``EngineStats``: the jobs it answered, its passes, and their
    inputs, tokens and seconds."""

    requests: int
    batches: int
    inputs: int
    tokens: int
    processing_seconds: float


@dataclass(frozen=True)
class EngineStats:
    """An engine's figures: counters (totals since it started, which it adds to with
    ``EngineShared.add_stats``) and gauges (now, set with ``set_queues`` and ``set_sizing``)."""

    processed_requests: int = 0
    failed_requests: int = 0
    dropped_requests: int = 0  # timed out or cancelled before their pass began
    batches: int = 0
    batched_requests: int = 0
    batched_inputs: int = 0
    tokens: int = 0
    processing_seconds: float = 0.0
    preemptions: int = 0  # interactive passes run between the steps of a bulk pass
    # Per lane: requests answered, and the sums of their waits (arrival to first pass) and latencies.
    interactive_requests: int = 0
    interactive_wait_seconds: float = 0.0
    interactive_latency_seconds: float = 0.0
    bulk_requests: int = 0
    bulk_wait_seconds: float = 0.0
    bulk_latency_seconds: float = 0.0
    # The cross-encoder's share of the totals above (a pass runs one model): the rest is bge-m3's.
    rerank_requests: int = 0
    rerank_batches: int = 0
    rerank_inputs: int = 0  # (query, passage) pairs
    rerank_tokens: int = 0
    rerank_processing_seconds: float = 0.0
    # Gauges: jobs waiting for their first pass, and the pass sizing.
    interactive_queue: int = field(default=0, metadata=_GAUGE)
    bulk_queue: int = field(default=0, metadata=_GAUGE)
    tokens_per_second: float = field(default=0.0, metadata=_GAUGE)
    bulk_pass_tokens: int = field(default=0, metadata=_GAUGE)

    def lane(self, lane: Lane) -> LaneStats:
        if lane == Lane.INTERACTIVE:
            return LaneStats(self.interactive_queue, self.interactive_requests, self.interactive_wait_seconds,
                             self.interactive_latency_seconds)
        return LaneStats(self.bulk_queue, self.bulk_requests, self.bulk_wait_seconds, self.bulk_latency_seconds)

    def model(self, rerank: bool) -> ModelStats:
        """The cross-encoder's figures (``rerank``), or bge-m3's: the totals less the cross-encoder's."""
        mine = ModelStats(self.rerank_requests, self.rerank_batches, self.rerank_inputs, self.rerank_tokens,
                          self.rerank_processing_seconds)
        if rerank:
            return mine
        return ModelStats(self.processed_requests - mine.requests, self.batches - mine.batches,
                          self.batched_inputs - mine.inputs, self.tokens - mine.tokens,
                          self.processing_seconds - mine.processing_seconds)

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(EngineStats))
_COUNTS = frozenset(f.name for f in fields(EngineStats) if f.type == "int")  # kept as doubles in the array
_COUNTERS = tuple((i, f.name) for i, f in enumerate(fields(EngineStats)) if not f.metadata.get("gauge"))


_ADDING = threading.Lock()  # one per process: only the engine's own threads add to its figures


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
        self.stats = ctx.RawArray("d", len(_FIELDS))
        self._info = ctx.RawArray("c", _INFO_BYTES)

    def requests_in_flight(self) -> int:
        """Requests handed to this engine by every web worker and not answered yet."""
        return sum(self.in_flight)

    def requests_done(self) -> int:
        """Requests this engine has answered, failed or dropped since it started."""
        stats = self.read_stats()
        return stats.processed_requests + stats.failed_requests + stats.dropped_requests

    def add_stats(self, delta: EngineStats) -> None:
        """Add ``delta``'s counters (its gauges are left alone). The engine's threads add at once
        (the device thread, the answer threads): each ``+=`` reads, then writes."""
        with _ADDING:
            for i, name in _COUNTERS:
                if value := getattr(delta, name):
                    self.stats[i] += value

    def set_queues(self, interactive: int, bulk: int) -> None:
        self._set("interactive_queue", interactive)
        self._set("bulk_queue", bulk)

    def set_sizing(self, tokens_per_second: float, bulk_pass_tokens: int) -> None:
        self._set("tokens_per_second", tokens_per_second)
        self._set("bulk_pass_tokens", bulk_pass_tokens)

    def read_stats(self) -> EngineStats:
        values = zip(_FIELDS, self.stats[:], strict=True)
        return EngineStats(**{name: round(value) if name in _COUNTS else value for name, value in values})

    def set_info(self, info: dict[str, object]) -> None:
        data = json.dumps(info).encode()
        if len(data) >= _INFO_BYTES:  # cut, it would no longer be JSON
            raise ValueError(f"the engine's info takes {len(data)} bytes, more than {_INFO_BYTES - 1}")
        self._info.value = data

    def info(self) -> dict[str, object]:
        raw = self._info.value
        return json.loads(raw) if raw else {}

    def _set(self, name: str, value: float) -> None:
        self.stats[_FIELDS.index(name)] = value
