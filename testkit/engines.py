"""Engines started from the test process as the master would start them: an engine's spec
with small test settings, and a wait until a pool's engines are ready."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gpu_pool.engine.spec import EngineSpec
from gpu_pool.pool import EnginePool
from gpu_pool.wire.shared import EngineState


def engine_spec(model_path: Path, **overrides: Any) -> EngineSpec:
    """A CPU engine on ``model_path`` in float32 with small batches; ``overrides`` replace fields."""
    fields: dict[str, Any] = dict(
        index=0, device="cpu", dtype="float32", model_path=str(model_path), batch_size=8, max_batch_tokens=4096,
        batch_timeout_ms=5, concurrency=2, interactive_max_wait_ms=40, bulk_share=0.5, threads=1,
        log_level="INFO", log_format="text")
    return EngineSpec(**(fields | overrides))


def wait_ready(pool: EnginePool, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(h.shared.state.value == EngineState.READY for h in pool.engines):
            return
        time.sleep(0.05)
    raise TimeoutError("engine did not become ready")
