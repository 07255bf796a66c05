"""The cross-encoder in a real engine process beside bge-m3: what the engine says it serves, rerank
jobs among embedding jobs (a pass runs one model, the lanes hold), a rerank on engines without a
cross-encoder refused at once, and the fault paths of a rerank job."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from embsvc.core.rerank_pairs import load_tokenizer, pair_ids
from gpu_pool.client import EngineClient, JobOptions
from gpu_pool.errors import EngineFailed, EngineUnavailable, ModelNotServed
from gpu_pool.model.device import resolve_device
from gpu_pool.model.m3 import PARALLEL_MIN_FLOPS, M3Model
from gpu_pool.model.reranker import CrossEncoder, Served
from gpu_pool.pool import EnginePool
from gpu_pool.wire.protocol import Kind, Lane
from gpu_pool.wire.shared import ModelStats
from testkit import simdevice
from testkit.engines import engine_spec, wait_ready
from testkit.passes import forward
from testkit.simdevice import Settings
from testkit.workload import MIXED_TEXTS, PARAGRAPH

ROOT = Path(__file__).resolve().parents[2]
UNUSED = np.array([0, 1, 2, 3], dtype=np.int32)
PAIRS = [("What is BGE-M3 hybrid retrieval?", passage) for passage in MIXED_TEXTS]


@pytest.fixture(scope="module")
def pairs(tiny_reranker) -> list[np.ndarray]:
    return pair_ids(load_tokenizer(tiny_reranker), PAIRS, 512)


def dense(client: EngineClient, ids: list[np.ndarray], lane: Lane | None = None) -> np.ndarray:
    with client.embed(ids, Kind.DENSE, UNUSED, JobOptions(priority=lane)) as result:
        return np.stack([result.dense(i).copy() for i in range(len(ids))])


def test_the_engine_says_which_cross_encoder_it_holds(rerank_client, tiny_reranker, client):
    reranker = rerank_client.info()["reranker"]
    assert reranker == {"name": tiny_reranker.name, "path": str(tiny_reranker), "max_positions": 8192,
                        "dtype": "float32"}
    assert client.info()["reranker"] is None  # bge-m3 alone


def test_a_rerank_without_a_cross_encoder_is_refused_at_once(client, pairs):
    before = client.snapshot()[0].stats
    with pytest.raises(ModelNotServed, match="no cross-encoder"):
        client.rerank(pairs)
    after = client.snapshot()[0].stats
    assert (after.processed_requests, after.failed_requests, after.dropped_requests) == \
           (before.processed_requests, before.failed_requests, before.dropped_requests), "no job reached the engine"


def test_a_pair_past_the_cross_encoders_positions_is_refused_before_it_reaches_the_engine(rerank_client):
    too_long = np.full(8193, 5, dtype=np.int32)  # 8192 positions: on CUDA one more would be a device-side assert
    with pytest.raises(ValueError, match="8192 positions"):
        rerank_client.rerank([too_long])


def settled_stats(client: EngineClient) -> tuple[ModelStats, ModelStats]:
    """The cross-encoder's and bge-m3's figures once no job is in flight: the engine counts a job
    after its answer is sent, so the figures are read until they stop moving."""
    def read() -> tuple[ModelStats, ModelStats]:
        stats = client.snapshot()[0].stats
        return stats.model(rerank=True), stats.model(rerank=False)

    deadline, last = time.monotonic() + 5, read()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = read()
        if now == last:
            return now
        last = now
    return last


def test_rerank_and_embedding_jobs_together_each_get_their_own_models_answer(rerank_client, pairs, tokenizer):
    texts = tokenizer.encode(MIXED_TEXTS[:6])
    logits, vectors = rerank_client.rerank(pairs), dense(rerank_client, texts)
    old_rerank, old_embedding = settled_stats(rerank_client)
    with ThreadPoolExecutor(8) as pool:  # arriving together: one queue, passes of one model each
        reranked = [pool.submit(rerank_client.rerank, pairs) for _ in range(6)]
        embedded = [pool.submit(dense, rerank_client, texts) for _ in range(6)]
        for future in reranked:
            np.testing.assert_allclose(future.result(), logits, atol=1e-5, rtol=0)
        for future in embedded:
            np.testing.assert_allclose(future.result(), vectors, atol=1e-5, rtol=0)
    rerank, embedding = settled_stats(rerank_client)
    assert rerank.requests - old_rerank.requests == 6 and embedding.requests - old_embedding.requests == 6
    assert rerank.inputs - old_rerank.inputs == 6 * len(pairs)
    assert rerank.tokens - old_rerank.tokens == 6 * sum(len(x) for x in pairs)
    assert embedding.inputs - old_embedding.inputs == 6 * len(texts)
    assert rerank.batches > old_rerank.batches and embedding.batches > old_embedding.batches


def test_a_query_rerank_under_bulk_embedding_load_is_answered_first(rerank_client, pairs, tokenizer):
    expected = rerank_client.rerank(pairs[:3])
    bulk_texts = tokenizer.encode([PARAGRAPH * 4] * 8)
    done = threading.Event()

    def bulk_load() -> int:
        jobs = 0
        while not done.is_set():
            dense(rerank_client, bulk_texts, Lane.BULK)
            jobs += 1
        return jobs

    with ThreadPoolExecutor(4) as pool:
        loads = [pool.submit(bulk_load) for _ in range(4)]
        time.sleep(0.5)  # the bulk lane is busy
        began = time.monotonic()
        logits = rerank_client.rerank(pairs[:3], JobOptions(priority=Lane.INTERACTIVE))
        waited = time.monotonic() - began
        bulk_busy = not any(load.done() for load in loads)
        done.set()
        bulk_jobs = sum(load.result() for load in loads)
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
    assert bulk_busy and bulk_jobs > 0
    stats = rerank_client.snapshot()[0].stats
    assert stats.lane(Lane.INTERACTIVE).requests > 0
    assert waited < 5, f"the query's rerank waited {waited:.1f} s behind bulk work"


def test_on_the_simulated_accelerator_the_logits_are_the_cpus(tiny_model, tiny_reranker, pairs):
    """The cross-encoder's CUDA path (pinned uploads, its logits' asynchronous copy, events) on the
    simulated device of testkit/simdevice.py: the same logits as on the CPU."""
    ids, lengths = np.concatenate(pairs), np.array([len(x) for x in pairs])
    no_colbert = np.zeros(0, dtype=np.int64)

    def served(device) -> Served:
        embedder = M3Model(tiny_model, device, torch.float32)
        return Served(embedder, CrossEncoder(tiny_reranker, embedder))

    on_cpu = forward(served(torch.device("cpu")), ids, lengths, Kind.RERANK, no_colbert)
    with simdevice.installed(Settings()) as sim:
        device = resolve_device(f"{simdevice.KIND}:0")
        sim.set_device(device.tensors)  # this thread's operations run on the device's clock
        got = forward(served(device), ids, lengths, Kind.RERANK, no_colbert)
        assert sim.counts["copies"] >= 1 and sim.counts["events"] >= 1
    assert got.dense is None and got.sparse is None and got.colbert is None
    assert on_cpu.logits is not None
    # The same arithmetic; its threads may split a sum differently (the accelerator runs at most two).
    np.testing.assert_allclose(got.logits, on_cpu.logits, rtol=0, atol=1e-6)


def test_the_cross_encoders_threads_follow_its_own_work(tiny_model, tiny_reranker):
    """A pass takes all its CPU threads by the cross-encoder's FLOPs, not bge-m3's: a tiny bge-m3
    beside the full cross-encoder (as bench/rerank.py serves them) once kept its passes on one."""
    embedder = M3Model(tiny_model, torch.device("cpu"), torch.float32, threads=2)
    reranker = CrossEncoder(tiny_reranker, embedder)
    embedder.flops_per_token = 1  # a bge-m3 far smaller than the cross-encoder
    saved = torch.get_num_threads()
    try:
        tokens = int(PARALLEL_MIN_FLOPS // reranker.flops_per_token) + 1
        reranker.use_threads(tokens)
        assert torch.get_num_threads() == 2
        embedder.use_threads(tokens)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)


FAULT_ERROR, FAULT_OOM, FAULT_SLOW = 97, 96, 98  # a pass holding one fails, runs out of memory, sleeps


@pytest.fixture(scope="module")
def faulty_pool(tiny_model, tiny_reranker):
    """An engine with the cross-encoder whose passes fail on the tokens above (testkit/engine_faults)."""
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "ENGINE_FAULT_ERROR_TOKEN",
                                                     "ENGINE_FAULT_OOM_TOKEN", "ENGINE_FAULT_SLOW_TOKEN",
                                                     "ENGINE_FAULT_SLOW_MS")}
    # Spawned engines (the restarted one too) take these from the environment at their start.
    os.environ.update(ENGINE_FAULT_ERROR_TOKEN=str(FAULT_ERROR), ENGINE_FAULT_OOM_TOKEN=str(FAULT_OOM),
                      ENGINE_FAULT_SLOW_TOKEN=str(FAULT_SLOW), ENGINE_FAULT_SLOW_MS="20000",
                      PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "testkit" / "engine_faults"),
                                                               saved["PYTHONPATH"]])))
    pool = EnginePool([engine_spec(tiny_model, reranker_path=str(tiny_reranker))], n_slots=1)
    try:
        pool.start()
        wait_ready(pool)
        yield pool
    finally:
        pool.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def with_token(ids: np.ndarray, token: int) -> np.ndarray:
    return np.concatenate((ids[:2], [token], ids[3:])).astype(np.int32)


@pytest.mark.slow  # an engine of its own, started twice
def test_a_rerank_jobs_faults_fail_it_alone_and_a_dead_engine_fails_it_with_a_503(faulty_pool, pairs):
    client = EngineClient(faulty_pool, faulty_pool.take_slot(), max_queue_size=50, timeout_s=60)
    expected = client.rerank(pairs[:2])
    with pytest.raises(EngineFailed) as failed:
        client.rerank([with_token(pairs[0], FAULT_ERROR)])
    assert not failed.value.out_of_memory
    # Out of memory: the pass is split until the pair that does not fit is alone; the other job is answered.
    with ThreadPoolExecutor(2) as pool:
        oom = pool.submit(client.rerank, [with_token(pairs[0], FAULT_OOM)])
        fine = pool.submit(client.rerank, pairs[:2])
        with pytest.raises(EngineFailed) as failed:
            oom.result()
        assert failed.value.out_of_memory
        np.testing.assert_allclose(fine.result(), expected, atol=1e-5, rtol=0)
    # The engine dies under a rerank job: it fails at once, and the restarted engine serves again.
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.rerank, [with_token(pairs[0], FAULT_SLOW)])
        engine = faulty_pool.engines[0]
        time.sleep(1.0)  # the job is in its pass, asleep
        engine.process.kill()
        with pytest.raises(EngineUnavailable):
            slow.result(timeout=30)
    deadline = time.monotonic() + 30
    while engine.shared.restarts.value == 0:
        assert time.monotonic() < deadline, "the pool did not see the engine die"
        time.sleep(0.05)
    wait_ready(faulty_pool)  # loading again takes seconds on a busy machine
    np.testing.assert_allclose(client.rerank(pairs[:2]), expected, atol=1e-5, rtol=0)
