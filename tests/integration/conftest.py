"""The integration harness: a real engine process on the tiny model, driven from the test
process as the master, over real pipes and shared memory; FlagEmbedding on the same folder
as the reference. One engine, one reference and one tokenizer serve the whole session."""

from __future__ import annotations

import time

import pytest
from FlagEmbedding import BGEM3FlagModel

from embsvc.core.tokenizer import TextTokenizer
from gpu_pool.client import EngineClient
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.pool import EnginePool
from gpu_pool.wire.shared import EngineState


def engine_spec(model_path, **overrides) -> EngineSpec:
    fields = dict(index=0, device="cpu", dtype="float32", model_path=str(model_path), batch_size=8,
                  max_batch_tokens=4096, batch_timeout_ms=5, concurrency=2, interactive_max_wait_ms=40,
                  bulk_share=0.5, threads=1, log_level="INFO",
                  log_format="text")
    return EngineSpec(**(fields | overrides))


def wait_ready(pool: EnginePool, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(h.shared.state.value == EngineState.READY for h in pool.engines):
            return
        time.sleep(0.05)
    raise TimeoutError("engine did not become ready")


@pytest.fixture(scope="session")
def pool(tiny_model):
    pool = EnginePool([engine_spec(tiny_model)], n_slots=2)
    pool.start()
    wait_ready(pool)
    yield pool
    pool.stop()


@pytest.fixture(scope="session")
def client(pool) -> EngineClient:
    return EngineClient(pool, pool.take_slot(), max_queue_size=50, timeout_s=60)


@pytest.fixture(scope="session")
def reference(tiny_model) -> BGEM3FlagModel:
    return BGEM3FlagModel(str(tiny_model), use_fp16=False, devices="cpu")


@pytest.fixture(scope="session")
def tokenizer(tiny_model) -> TextTokenizer:
    return TextTokenizer(tiny_model)
