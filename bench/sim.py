"""Queries under bulk on the simulated GPU (testkit/simdevice.py), with the full-size model's shapes.

    .venv/bin/python -m bench.sim [--seconds 40] [--slowdown 40] [--unpaced]
    .venv/bin/python -m bench.sim --host-pass [--repeats 30]      (that alone: one JSON line)

One engine process on DEVICE=testkit.simdevice:0 (an H200's rates) with the GPU defaults
(BATCH_SIZE 64, MAX_BATCH_TOKENS 32768, INTERACTIVE_MAX_WAIT_MS 20), on the full-size random
bge-m3 in float16, computing shapes only (the ``meta`` device: only time is simulated). This
host runs the engine's Python tens of times slower than a GPU's host would, so the device runs
``--slowdown`` times slower too, and with it the engine's time settings; every figure printed
is divided by it: device time. The engine's code is the CUDA path's, unchanged.

  1. the lone query: a 10-token dense query, one at a time;
  2. bulk: four clients in a closed loop, each request eight texts of 150-400 tokens, all kinds;
     beside it one query at a time, a pause between: the query's p50/p99/max, bulk tokens/s;
  3. one layer of the largest bulk pass (the engine's pass budget, at the device's rate).

Prints one JSON line: the figures and the verdict of issue 22's bound, p99 <= 2 x lone + one layer.
``--unpaced``: the same with the engine's bulk passes unpaced (``PassTimer.keep_ahead`` made a
no-op in the engine process), as the host queued them before: the whole pass at once.

``--host-pass``: the host's side of a small pass (one 10-token text, dense: what a query
costs the engine's device thread), in this process on the simulated device: its kernels, its
step calls, and the host's CPU time per pass without the simulation's own (``SimDevice.overhead_s``),
run in a row (``finish``, as the engine runs a query) and a step per call (as a bulk pass), in
turns, the better of two each;
beside it the same pass's encoder on the ``meta`` device with no simulation (torch's dispatch
and the engine's Python alone, no kernel queued).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from gpu_pool.client import EngineClient, JobOptions
from gpu_pool.model.flops import flops_per_token
from gpu_pool.pool import EnginePool
from gpu_pool.wire.protocol import Kind, Lane
from testkit import simdevice
from testkit.engines import engine_spec, wait_ready
from testkit.model_builder import build_model
from testkit.simdevice import Rates

ROOT = Path(__file__).resolve().parent.parent
UNUSED = np.array([0, 1, 2, 3], dtype=np.int32)
ALL = Kind.DENSE | Kind.SPARSE | Kind.COLBERT
HIDDEN, INTERMEDIATE, LAYERS = 1024, 4096, 24


def text(rng: random.Random, tokens: int) -> np.ndarray:
    return np.array([0, *(rng.randrange(5, 250_000) for _ in range(tokens - 2)), 2], dtype=np.int32)


def timed_query(client: EngineClient, rng: random.Random) -> float:
    began = time.perf_counter()
    with client.embed([text(rng, 10)], Kind.DENSE, UNUSED, JobOptions(priority=Lane.INTERACTIVE)):
        return time.perf_counter() - began


def bulk_client(client: EngineClient, stop: threading.Event, tokens: list[int], seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        texts = [text(rng, rng.randint(150, 400)) for _ in range(8)]
        with client.embed(texts, ALL, UNUSED, JobOptions(priority=Lane.BULK)):
            tokens.append(sum(len(t) for t in texts))


def layer_seconds(tokens: int, mean_length: float, rates: Rates) -> float:
    """One layer of a pass of ``tokens`` texts of ``mean_length`` on the device: its products,
    attention (4 FLOPs per query, key and hidden unit) and about ten kernels' launches."""
    flops = tokens * flops_per_token(1, HIDDEN, INTERMEDIATE) + 4 * tokens * mean_length * HIDDEN
    return flops / rates.flops + 10 * rates.launch_s


def host_pass(full: Path, repeats: int) -> dict[str, float]:
    import torch

    from gpu_pool.model.device import resolve_device
    from gpu_pool.model.m3 import M3Model
    from gpu_pool.model.port import Model

    ids, lengths = text(random.Random(0), 10), np.array([10])

    def per_pass(model: Model, heads: bool = True, stepped: bool = False) -> tuple[float, int]:
        """CPU seconds of the host per pass, as the device thread runs a query's pass (in a row,
        ``finish``; ``stepped``: a step per call, as a bulk pass runs); its step calls."""
        for _ in range(3):
            run(model, heads, stepped)
        began = time.thread_time()
        steps = sum(run(model, heads, stepped) for _ in range(repeats))
        return (time.thread_time() - began) / repeats, steps // repeats

    def run(model: Model, heads: bool, stepped: bool) -> int:
        running = model.start(ids, lengths, Kind.DENSE, np.arange(0))
        if stepped:
            while not running.step():
                pass
        else:
            running.finish()
        if heads:  # the meta device alone has no host to copy to
            running.outputs_async().wait()
        return running.steps

    figures: dict[str, float] = {}
    with simdevice.installed(simdevice.Settings(compute="meta")) as sim:
        device = resolve_device(f"{simdevice.KIND}:0")
        sim.set_device(device.tensors)
        model = M3Model(full, device, torch.float16)
        for stepped in (True, False, True, False):  # in turns
            kernels, overhead = sim.counts["kernels"], sim.overhead_s
            seconds, steps = per_pass(model, stepped=stepped)
            simulating = (sim.overhead_s - overhead) / (repeats + 3)
            key = "host_us_per_pass_stepped" if stepped else "host_us_per_pass"
            figures[key] = min(figures.get(key, float("inf")), round(1e6 * (seconds - simulating)))
        figures |= {"kernels_per_pass": round((sim.counts["kernels"] - kernels) / (repeats + 3)),
                    "step_calls_per_pass": steps, "simulation_us_per_pass": round(1e6 * simulating)}
    bare_seconds, _ = per_pass(M3Model(full, torch.device("meta"), torch.float16), heads=False)
    return figures | {"bare_meta_host_us_per_encoder": round(1e6 * bare_seconds)}


def unpaced(folder: Path) -> None:
    """Spawned engines start with ``PassTimer.keep_ahead`` doing nothing (a sitecustomize on PYTHONPATH)."""
    (folder / "sitecustomize.py").write_text(
        "from gpu_pool.model import transfer\ntransfer.PassTimer.keep_ahead = lambda self, steps: None\n")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="of bulk load (wall clock)")
    parser.add_argument("--slowdown", type=float, default=40.0)
    parser.add_argument("--host-pass", action="store_true", help="only the host's time of a small pass")
    parser.add_argument("--unpaced", action="store_true", help="bulk passes queued whole, as before")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    slow = args.slowdown
    full = build_model(ROOT / "models" / "bge-m3-full", "full")
    if args.host_pass:
        print(json.dumps(host_pass(full, args.repeats)))
        return
    os.environ.update(SIMDEVICE_COMPUTE="meta", SIMDEVICE_SLOWDOWN=str(slow))  # read by the engine at its start
    if args.unpaced:
        unpaced(Path(tempfile.mkdtemp(prefix="bench-sim-")))
    spec = engine_spec(full, device=f"{simdevice.KIND}:0", dtype="float16", batch_size=64, max_batch_tokens=32768,
                       batch_timeout_ms=int(100 * slow), interactive_max_wait_ms=int(20 * slow), concurrency=2,
                       threads=1, log_level="WARNING")
    pool = EnginePool([spec], n_slots=1)
    pool.start()
    try:
        wait_ready(pool, timeout=600)
        client = EngineClient(pool, pool.take_slot(), max_queue_size=100, timeout_s=600)  # as a web worker: threads
        rng = random.Random(0)
        for _ in range(3):
            timed_query(client, rng)  # first passes of this shape
        lone = [timed_query(client, rng) for _ in range(20)]

        stop, tokens = threading.Event(), []
        bulk = [threading.Thread(target=bulk_client, args=(client, stop, tokens, i)) for i in range(4)]
        for thread in bulk:
            thread.start()
        time.sleep(min(10.0, args.seconds / 4))  # the sizer learns the bulk passes first
        counted, began = len(tokens), time.perf_counter()
        under: list[float] = []
        while time.perf_counter() - began < args.seconds:
            under.append(timed_query(client, rng))
            time.sleep(rng.uniform(0.05, 0.3))
        bulk_s, bulk_tokens = time.perf_counter() - began, sum(tokens[counted:])
        stats = client.snapshot()[0].stats
        stop.set()
        for thread in bulk:
            thread.join()
    finally:
        pool.stop()

    budget = stats.bulk_pass_tokens or spec.max_batch_tokens
    layer = layer_seconds(budget, 275, Rates())
    lone_s = statistics.median(lone) / slow
    under_ms = sorted(1000 * s / slow for s in under)
    p99 = under_ms[min(len(under_ms) - 1, int(0.99 * len(under_ms)))]
    bound_ms = 1000 * (2 * lone_s + layer)
    print(json.dumps({
        "slowdown": slow, "paced": not args.unpaced, "lone_query_ms": round(1000 * lone_s, 2),
        "queries_under_bulk": len(under_ms),
        "under_bulk_p50_ms": round(statistics.median(under_ms), 2), "under_bulk_p99_ms": round(p99, 2),
        "under_bulk_max_ms": round(under_ms[-1], 2), "largest_bulk_pass_tokens": budget,
        "one_layer_of_it_ms": round(1000 * layer, 2), "bound_ms": round(bound_ms, 2), "holds": p99 <= bound_ms,
        "bulk_tokens_per_s": round(bulk_tokens / bulk_s * slow), "preemptions": stats.preemptions,
    }))


if __name__ == "__main__":
    main()
