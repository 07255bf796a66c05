"""The engines' figures as the web side reads them: each engine's ``EngineSnapshot``, and
their totals for /stats and /health/detailed (``batching_stats``, ``lane_stats``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpu_pool.wire.protocol import Lane
from gpu_pool.wire.shared import EngineState, EngineStats


@dataclass(frozen=True)
class EngineSnapshot:
    index: int
    device: str
    state: EngineState
    queue_size: int  # requests handed to it and not answered yet (waiting or computing)
    restarts: int
    stats: EngineStats

    def as_dict(self) -> dict[str, object]:
        """As /stats lists each engine."""
        return {"index": self.index, "device": self.device, "state": self.state.name.lower(),
                "queue_size": self.queue_size, "restarts": self.restarts, **self.stats.as_dict()}


def batching_stats(engines: Sequence[EngineSnapshot]) -> dict[str, object]:
    """The batching figures of all engines together."""
    stats = [engine.stats for engine in engines]
    batches = sum(s.batches for s in stats)
    per_batch = batches or 1
    return {
        "queue_size": sum(engine.queue_size for engine in engines),
        "processed_requests": int(sum(s.processed_requests for s in stats)),
        "failed_requests": int(sum(s.failed_requests for s in stats)),
        "batches": int(batches),
        "average_batch_size": sum(s.batched_requests for s in stats) / per_batch,
        "average_batch_inputs": sum(s.batched_inputs for s in stats) / per_batch,
        "average_processing_time": sum(s.processing_seconds for s in stats) / per_batch,
        "tokens_processed": int(sum(s.tokens for s in stats)),
        "dropped_requests": int(sum(s.dropped_requests for s in stats)),
        "preemptions": int(sum(s.preemptions for s in stats)),
        "bulk_pass_tokens": int(max((s.bulk_pass_tokens for s in stats), default=0)),
    }


def lane_stats(engines: Sequence[EngineSnapshot]) -> dict[str, dict[str, float]]:
    """Per lane, all engines together: jobs waiting for their first pass, requests answered,
    and their mean wait (arrival in the engine to first pass) and latency (to the answer)."""
    lanes = {}
    for lane in (Lane.INTERACTIVE, Lane.BULK):
        figures = [engine.stats.lane(lane) for engine in engines]
        count = sum(f.requests for f in figures)
        lanes[lane.name.lower()] = {
            "queue_size": sum(f.queue for f in figures),
            "requests": int(count),
            "average_wait_s": sum(f.wait_seconds for f in figures) / (count or 1),
            "average_latency_s": sum(f.latency_seconds for f in figures) / (count or 1),
        }
    return lanes
