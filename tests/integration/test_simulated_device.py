"""The engine's CUDA path on the simulated device (testkit/simdevice.py): the same code, through
the same seam (gpu_pool/model/device.py), its time on a device clock.

In this process, the model's passes: the vectors of the CPU, a pass's time from its FLOPs,
and a host that stays about a layer ahead of the device. In an engine process
(DEVICE=testkit.simdevice:0): the answer thread, asynchronous copies, a query run between the
queued steps of a bulk pass, the out-of-memory split, and a device fault ending the engine.
tests/integration/test_simulated_device_coverage.py checks that these tests run every line of
gpu_pool marked ``# cuda-only``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gpu_pool.client import EngineClient, EngineFailed, EngineUnavailable, JobOptions
from gpu_pool.model.device import resolve_device
from gpu_pool.model.m3 import M3Model
from gpu_pool.pool import EnginePool
from gpu_pool.wire.protocol import Kind, Lane
from testkit import simdevice
from testkit.engines import engine_spec, wait_ready
from testkit.passes import forward
from testkit.simdevice import Rates, Settings

pytestmark = pytest.mark.slow  # engine starts: in make test, not test-fast

ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
UNUSED = np.array([0, 1, 2, 3], dtype=np.int32)
SLOW = Rates(flops=50e6)  # 50 MFLOP/s: the tiny model's passes take the device tens of milliseconds
FLOPS_PER_TOKEN = 32_768  # the tiny model's (gpu_pool/model/flops.py)
MEMORY = 300 * 96 * 4  # the query, key and value product of 300 tokens in float32: larger passes run out
FAULT_TOKEN = 30_000  # no other text of these tests holds it


def texts_ids(n_texts: int, length: int, first: int = 5) -> list[np.ndarray]:
    return [np.array([0, *range(first + i, first + i + length - 2), 2], dtype=np.int32) for i in range(n_texts)]


# -- in this process ---------------------------------------------------------------


@pytest.fixture
def sim_model(tiny_model: Path):
    with simdevice.installed(Settings(rates=SLOW)) as sim:
        device = resolve_device(f"{simdevice.KIND}:0")
        assert device.accelerator is sim
        sim.set_device(device.tensors)  # this thread's operations now run on the device's clock
        yield sim, M3Model(tiny_model, device, torch.float32)


def test_a_pass_gives_the_cpus_outputs_and_takes_its_flops_time_on_the_device(sim_model, tiny_model):
    sim, model = sim_model
    ids = np.concatenate(texts_ids(3, 100))
    lengths = np.array([100, 100, 100])
    busy = sim.busy_s
    running = model.start(ids, lengths, ALL, np.arange(3))
    while not running.step():
        pass
    pending = running.outputs_async()
    got = pending.wait()
    device_s, busy = pending.seconds(), sim.busy_s - busy
    cpu = forward(M3Model(tiny_model, torch.device("cpu"), torch.float32), ids, lengths, ALL, np.arange(3))
    for name in ("dense", "sparse", "colbert"):
        np.testing.assert_array_equal(getattr(got, name), getattr(cpu, name), err_msg=name)
    # The encoder's products and attention (4 FLOPs per query, key and head dimension, in each
    # layer) at the set rate; the heads and the kernels' launches add a little. The pass's time
    # on the device's clock is at least that (more where the host, slower, kept it waiting).
    attention_flops = 2 * 3 * 4 * 100 * 100 * 32
    expected_s = (300 * FLOPS_PER_TOKEN + attention_flops) / SLOW.flops
    assert expected_s <= busy < 1.2 * expected_s, (busy, expected_s)
    assert device_s >= expected_s
    assert sim.counts["copies"] >= 3 and sim.counts["events"] >= 3


def test_a_bulk_pass_keeps_the_host_about_a_layer_ahead_of_the_device(sim_model):
    sim, model = sim_model
    ids, lengths = np.concatenate(texts_ids(2, 150)), np.array([150, 150])

    def queued_ahead(keep_ahead: bool) -> tuple[float, float]:
        """The most device time queued and not yet run, and one layer's device time."""
        running = model.start(ids, lengths, Kind.DENSE, np.arange(0), step_tokens=1000)
        stream, most, began = sim.current_stream(None), 0.0, time.perf_counter()
        while not running.step():
            if keep_ahead:
                running.keep_ahead(running.steps_per_layer)
            most = max(most, stream.tail - time.perf_counter())
        running.sync()
        layer_s = (time.perf_counter() - began) / model.layers
        out = running.outputs_async().wait()
        assert out.dense.shape == (2, 32) and out.sparse is None and out.colbert is None  # the heads asked for
        return most, layer_s

    unpaced, layer_s = queued_ahead(keep_ahead=False)
    paced, layer_s = queued_ahead(keep_ahead=True)
    assert unpaced > 1.5 * layer_s  # the whole pass queued at once: a query would wait for all of it
    assert paced <= 1.2 * layer_s, (paced, layer_s)


def test_the_out_of_memory_error_and_a_device_fault_are_cudas(tiny_model):
    with simdevice.installed(Settings(memory_bytes=MEMORY, fault_token=FAULT_TOKEN)) as sim:
        device = resolve_device(f"{simdevice.KIND}:0")
        sim.set_device(device.tensors)
        model = M3Model(tiny_model, device, torch.float32)
        with pytest.raises(torch.OutOfMemoryError):
            forward(model, np.concatenate(texts_ids(2, 200)), np.array([200, 200]), Kind.DENSE, np.arange(0))
        model.release_memory()
        assert sim.counts["emptied"] == 1
        faulty = texts_ids(1, 10, first=FAULT_TOKEN - 3)[0]
        with pytest.raises(RuntimeError, match="illegal memory access") as fault:
            forward(model, faulty, np.array([10]), Kind.DENSE, np.arange(0))
        from gpu_pool.engine.answers import is_device_fault

        assert is_device_fault(fault.value)
        with pytest.raises(RuntimeError, match="illegal memory access"):  # the context is lost for good
            forward(model, texts_ids(1, 10)[0], np.array([10]), Kind.DENSE, np.arange(0))


# -- an engine process on the simulated device ---------------------------------------------


@pytest.fixture(scope="module")
def sim_pool(tiny_model):
    with pytest.MonkeyPatch.context() as env:  # the engine (and a restarted one) reads these at its start
        env.setenv("SIMDEVICE_TFLOPS", str(SLOW.flops / 1e12))
        env.setenv("SIMDEVICE_MEMORY_BYTES", str(MEMORY))
        env.setenv("SIMDEVICE_FAULT_TOKEN", str(FAULT_TOKEN))
        pool = EnginePool([engine_spec(tiny_model, device=f"{simdevice.KIND}:0")], n_slots=2)
        pool.start()
        try:
            wait_ready(pool)
            yield pool
        finally:
            pool.stop()


@pytest.fixture(scope="module")
def sim_client(sim_pool) -> EngineClient:
    return EngineClient(sim_pool, sim_pool.take_slot(), max_queue_size=50, timeout_s=60)


def test_the_engine_answers_with_the_references_vectors(sim_client, tokenizer, reference):
    texts = ["What is BGE-M3?", "Simulated devices compute on the CPU and keep time on a clock of their own."]
    ids = tokenizer.encode(texts)
    with sim_client.embed(ids, ALL, UNUSED) as result:
        dense = [result.dense(i).copy() for i in range(len(texts))]
    ref = reference.encode(texts, return_dense=True)["dense_vecs"]
    for got, expected in zip(dense, ref, strict=True):
        assert got @ expected / np.linalg.norm(expected) >= 0.99999
    (snapshot,) = sim_client.snapshot()
    assert snapshot.device == f"{simdevice.KIND}:0"


def test_a_query_runs_between_the_queued_steps_of_a_bulk_pass(sim_client):
    before = sim_client.snapshot()[0].stats.preemptions
    bulk_ids = texts_ids(2, 140)  # 280 tokens: about 180 ms of the device, 8 steps
    finished: dict[str, float] = {}

    def bulk() -> None:
        with sim_client.embed(bulk_ids, ALL, UNUSED, JobOptions(priority=Lane.BULK)):
            finished["bulk"] = time.monotonic()

    thread = threading.Thread(target=bulk)
    thread.start()
    time.sleep(0.06)  # the bulk pass under way
    with sim_client.embed(texts_ids(1, 8), Kind.DENSE, UNUSED, JobOptions(priority=Lane.INTERACTIVE)):
        finished["query"] = time.monotonic()
    thread.join()
    assert finished["query"] < finished["bulk"]
    assert sim_client.snapshot()[0].stats.preemptions > before


def test_a_pass_out_of_memory_is_split_and_one_input_too_large_fails_alone(sim_client, tokenizer):
    # Interactive passes run whole (a bulk pass's products run in row chunks of its budget,
    # which bound its memory too).
    whole = JobOptions(priority=Lane.INTERACTIVE)
    fits = texts_ids(4, 120)  # 480 tokens: out of memory together, 240 in each half
    with sim_client.embed(fits, Kind.DENSE, UNUSED, whole) as result:
        dense = [result.dense(i).copy() for i in range(4)]
    for ids, vector in zip(fits, dense, strict=True):
        with sim_client.embed([ids], Kind.DENSE, UNUSED) as alone:
            np.testing.assert_allclose(alone.dense(0), vector, atol=1e-6)
    with pytest.raises(EngineFailed) as failed, sim_client.embed(texts_ids(1, 320), Kind.DENSE, UNUSED, whole):
        pass
    assert failed.value.out_of_memory


def test_a_device_fault_fails_its_job_with_a_503_and_ends_the_engine(sim_pool, sim_client):
    # Last in this module: the engine ends (tests/integration/test_engine_pool.py sees the pool start it again).
    engine = sim_pool.engines[0]
    with pytest.raises(EngineUnavailable, match="device failed"), \
            sim_client.embed(texts_ids(1, 10, first=FAULT_TOKEN - 3), Kind.DENSE, UNUSED):
        pass
    deadline = time.monotonic() + 30
    while engine.shared.restarts.value == 0:
        assert time.monotonic() < deadline, "the engine went on after its device failed"
        time.sleep(0.02)
