"""What an engine process is started with: a small frozen record, pickled once at spawn."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class EngineSpec:
    index: int
    device: str
    dtype: str
    model_path: str
    batch_size: int  # most jobs merged into one forward pass
    max_batch_tokens: int  # tokens in one forward pass
    batch_timeout_ms: int  # longest a batch keeps filling while the device is busy
    concurrency: int  # bulk batches in progress: one running, the others prepared
    interactive_max_wait_ms: int  # the longest a step of a bulk pass may take: a query's wait for its turn
    bulk_share: float  # of the device's time, kept for bulk passes while queries keep coming
    threads: int  # torch CPU threads; 0 = the cores this process may use
    log_level: str
    log_format: str
    # The cross-encoder's folder (BAAI/bge-reranker-v2-m3's layout), loaded beside bge-m3 on the
    # same device and dtype; "": none, and rerank jobs are refused.
    reranker_path: str = ""


def engine_specs(devices: list[str], template: EngineSpec) -> list[EngineSpec]:
    """One spec per device, numbered in order."""
    return [replace(template, index=i, device=device) for i, device in enumerate(devices)]
