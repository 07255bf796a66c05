"""The engine's CPU per short request without HTTP: clients in this process, over one engine.

    PYTHONPATH=TREE .venv/bin/python bench/engine_cost.py [--requests 3000] [--clients 16]

One CPU engine on the tiny model (testkit's engine spec, batches of up to 32 jobs), two web
worker slots, ``--clients`` threads in a closed loop, each sending one short text (dense) per
job through ``EngineClient``: the engine is the bottleneck, as on a host whose web side keeps
up. Reads the engine process's CPU time and its threads' context switches (/proc) before and
after, and its batch counts. Prints one JSON line: µs of engine CPU and context switches per
request, requests/s, requests per pass. Run it under two checkouts' PYTHONPATH in turns for a
before and after: run as a file (not ``-m``, which would put the working directory first), it
and the engine process import ``gpu_pool`` from there. (Few clients, ``--clients 2``, leave the
engine idle between passes of one or two requests, as a web side that is the bottleneck does.)
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

from gpu_pool.client import EngineClient
from gpu_pool.pool import EnginePool
from gpu_pool.wire.protocol import Kind
from testkit.engines import engine_spec, wait_ready
from testkit.model_builder import build_model
from testkit.procs import cpu_us, switches

ROOT = Path(__file__).resolve().parent.parent
_IDS = [np.array([0, *range(5, 14), 2], dtype=np.int32)]  # ten tokens: a short query
_UNUSED = np.array([0, 1, 2, 3], dtype=np.int32)


def closed_loop(clients: list[EngineClient], threads: int, count: int) -> None:
    """``count`` jobs from ``threads`` threads, spread over the clients (the slots)."""
    left = [count]
    lock = threading.Lock()

    def work(client: EngineClient) -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            with client.embed(_IDS, Kind.DENSE, _UNUSED) as result:
                result.dense(0)

    workers = [threading.Thread(target=work, args=(clients[i % len(clients)],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    tiny = build_model(ROOT / "models" / "bge-m3-tiny", "tiny")
    pool = EnginePool([engine_spec(tiny, batch_size=32)], n_slots=2)
    pool.start()
    try:
        wait_ready(pool, 300)
        clients = [EngineClient(pool, pool.take_slot(), max_queue_size=1000, timeout_s=60, interactive_max_tokens=64)
                   for _ in range(2)]
        closed_loop(clients, args.clients, 500)  # warm-up
        handle = pool.engines[0]
        assert handle.process is not None and handle.process.pid is not None
        pid = handle.process.pid
        before, switched, stats_before = cpu_us(pid), switches(pid), handle.shared.read_stats()
        began = time.perf_counter()
        closed_loop(clients, args.clients, args.requests)
        seconds = time.perf_counter() - began
        after, stats = cpu_us(pid), handle.shared.read_stats()
        passes = max(1, stats.batches - stats_before.batches)
        print(json.dumps({"engine_us": round((after - before) / args.requests, 1),
                          "engine_switches": round((switches(pid) - switched) / args.requests, 2),
                          "requests_per_s": round(args.requests / seconds, 1),
                          "requests_per_pass": round((stats.batched_requests - stats_before.batched_requests) / passes,
                                                     2)}))
    finally:
        pool.stop()


if __name__ == "__main__":
    main()
