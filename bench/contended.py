"""A query's pass on cores that others want: the engine's 16-token pass beside busy processes,
under each OpenMP spin count, in turns.

    .venv/bin/python -m bench.contended [--spincounts default 2000] [--turns 2] [--passes 25] [--nice 0]

The engine's own model (models/bge-m3-full, random weights, the real model's compute; bfloat16,
two threads, as the engine runs it on a CPU with bf16), in a fresh process per turn and spin
count, since libgomp reads ``GOMP_SPINCOUNT`` when it loads ("default": libgomp's own, 300,000).
Each process times five bulk passes of 8 texts of 128 tokens alone (what the setting costs bulk
work), then ``--passes`` dense passes of one 16-token text alone, beside one and beside two
processes that spin 30 ms of every 40 (a web worker writing a bulk answer, a client reading
one) at niceness ``--nice``; each case on two threads, then on one (``one_thread``, as the
engine runs a query while bulk work is under way). Prints a JSON line per turn and spin count
(each case's median and slowest pass, ms), then one of the medians over the turns.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from multiprocessing.synchronize import Event
from pathlib import Path

from testkit.model_builder import build_model

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "bge-m3-full"
BUSY_S, EVERY_S = 0.030, 0.040


def busy(stop: Event, nice: int) -> None:
    os.nice(nice)
    while not stop.is_set():
        began = time.perf_counter()
        while time.perf_counter() - began < BUSY_S:
            pass
        time.sleep(EVERY_S - BUSY_S)


def passes(count: int, nice: int) -> dict[str, list[float]]:
    """In this process: each case's (median, slowest) pass in ms."""
    import numpy as np
    import torch

    from gpu_pool.model.m3 import M3Model
    from gpu_pool.wire.protocol import Kind

    torch.set_num_threads(2)
    model = M3Model(MODEL, torch.device("cpu"), torch.bfloat16, threads=2)
    no_colbert = np.zeros(0, dtype=np.int32)

    def timed(ids: np.ndarray, texts: int, one_thread: bool = False) -> float:
        """One dense pass of ``texts`` texts of equal length, ms."""
        began = time.perf_counter()
        run = model.start(ids, np.full(texts, len(ids) // texts, dtype=np.int32), Kind.DENSE, no_colbert,
                          one_thread=one_thread)
        run.finish()
        run.outputs_async().wait()
        return (time.perf_counter() - began) * 1000

    query = np.array([0, *range(1000, 1014), 2], dtype=np.int32)
    bulk = np.resize(np.arange(1000, 1128, dtype=np.int32), 8 * 128)  # 8 texts of 128 tokens
    for _ in range(5):
        timed(query, 1)
    timed(bulk, 8)
    bulk_times = [timed(bulk, 8) for _ in range(5)]  # alone: what the spin count costs bulk work
    figures = {"bulk_8x128_alone": [round(statistics.median(bulk_times), 1), round(max(bulk_times), 1)]}
    context = multiprocessing.get_context("spawn")
    for others in (0, 1, 2):
        stop = context.Event()
        workers = [context.Process(target=busy, args=(stop, nice), daemon=True) for _ in range(others)]
        for worker in workers:
            worker.start()
        time.sleep(0.3)  # started
        times = [timed(query, 1) for _ in range(count)]
        # The same pass on one thread: no barrier to wait at for a preempted partner.
        single = [timed(query, 1, one_thread=True) for _ in range(count)]
        stop.set()
        for worker in workers:
            worker.join()
        figures[f"beside_{others}"] = [round(statistics.median(times), 1), round(max(times), 1)]
        figures[f"beside_{others}_one_thread"] = [round(statistics.median(single), 1), round(max(single), 1)]
    return figures


def turn(spincount: str, count: int, nice: int) -> dict[str, list[float]]:
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if spincount != "default":
        env["GOMP_SPINCOUNT"] = spincount
    command = [sys.executable, "-m", "bench.contended", "--child", str(count), "--nice", str(nice)]
    out = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    figures: dict[str, list[float]] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spincounts", nargs="+", default=["default", "2000"])
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--passes", type=int, default=25)
    parser.add_argument("--nice", type=int, default=0, help="the busy processes' niceness (the web workers' is 5)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one process's passes
    args = parser.parse_args()
    if args.child:
        print(json.dumps(passes(args.child, args.nice)))
        return
    build_model(MODEL, "full")
    results: dict[str, list[dict[str, list[float]]]] = {}
    for number in range(args.turns):
        for spincount in args.spincounts if number % 2 == 0 else args.spincounts[::-1]:
            figures = turn(spincount, args.passes, args.nice)
            results.setdefault(spincount, []).append(figures)
            print(json.dumps({"turn": number, "spincount": spincount, "nice": args.nice, **figures}), flush=True)
    print(json.dumps({spincount: {case: [statistics.median(t[case][i] for t in turns) for i in (0, 1)]
                                  for case in turns[0]} for spincount, turns in results.items()}))


if __name__ == "__main__":
    main()
