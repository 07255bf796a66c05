"""Which processes had the cores while a query under bulk was slow (issue 22, 4.k).

The full-size model's server (DTYPE=auto), bulk beside it as in ``bench.priority --lanes`` (4
clients, 8 texts of 60-150 words, all kinds), and a 5-word dense query every 1.5 s sent from
this process with http.client, each timed. Every 10 ms a thread here reads the CPU time
(``/proc/PID/stat``, utime + stime) of the server's processes, of the load processes and of this
one, and the machine's (``/proc/stat``). For each query slower than ``--slow`` times the lone
one, it prints the CPU each process used inside the query's window:

    .venv/bin/python -m bench.lanes_watch [--runs 3] [--seconds 75] [--slow 2.0]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.gpu.server import embedding_requests
from bench.priority import QUERY, bulk_bodies, closed_loop, full_server
from testkit import procs
from testkit.model_builder import build_model
from testkit.server import Server

ROOT = Path(__file__).resolve().parent.parent
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
Sample = tuple[float, list[float], tuple[int, int]]  # when, each process's CPU µs, the machine's ticks (all, idle)


def machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:9]]
    return sum(fields), fields[3]


def watched(server: Server) -> dict[int, str]:
    """The processes to watch, each with its role: the server's, the load processes (this
    process's spawned children) and this one."""
    roles = {server.process.pid: "gunicorn master", os.getpid(): "this benchmark"}
    roles |= {pid: "engine" for pid in procs.engine_pids(server)}
    roles |= {pid: "web worker" for pid in procs.worker_pids(server)}
    loads = (p for p in procs.children(os.getpid()) if "spawn_main" in p.cmdline and p.state != "Z")
    roles |= {p.pid: "load process" for p in loads}
    return {pid: f"{role} {pid}" for pid, role in roles.items()}


class Watch:
    """Samples the CPU time of ``names``' processes every 10 ms on a thread of its own."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names = names
        self.pids = list(names)
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), [procs.cpu_us(p) for p in self.pids], machine_ticks()))
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def used(self, first: float, last: float) -> dict[str, object]:
        """CPU ms of each process, and of the machine, between two times."""
        inside = [s for s in self.samples if first <= s[0] <= last]
        if len(inside) < 2:
            return {}
        (t0, used0, (all0, idle0)), (t1, used1, (all1, idle1)) = inside[0], inside[-1]
        busy = round(((all1 - all0) - (idle1 - idle0)) * TICK_MS)
        return {"window_ms": round((t1 - t0) * 1000), "machine_cpu_ms": busy,
                **{self.names[p]: round((b - a) / 1000) for p, a, b in zip(self.pids, used0, used1, strict=True)
                   if b > a}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=75.0)
    parser.add_argument("--slow", type=float, default=2.0, help="report queries slower than this times the lone p50")
    args = parser.parse_args()
    full = build_model(ROOT / "models" / "bge-m3-full", "full")
    body = json.dumps({"input": QUERY, "return_sparse": False, "return_colbert": False})
    with tempfile.TemporaryDirectory() as tmp:
        server = full_server(full, Path(tmp))
        try:
            def query() -> tuple[float, float]:
                connection = http.client.HTTPConnection("127.0.0.1", server.port)  # the server ends idle ones
                started = time.monotonic()
                connection.request("POST", "/v1/embeddings", body, {**server.auth, "Content-Type": "application/json"})
                connection.getresponse().read()
                connection.close()
                return started, time.monotonic()

            lone = statistics.median(b - a for a, b in (query() for _ in range(20)))
            print(json.dumps({"lone_query_p50_ms": round(lone * 1000, 1)}), flush=True)
            work = embedding_requests(server, bulk_bodies((60, 150)))
            closed_loop(server.port, work, 4, 20.0)  # warm-up
            for run in range(args.runs):
                bulk = threading.Thread(target=closed_loop, args=(server.port, work, 4, args.seconds))
                bulk.start()
                time.sleep(3.0)  # the load process started and connected
                watch = Watch(watched(server))
                began, queries = time.monotonic(), []
                while time.monotonic() < began + args.seconds - 8:
                    queries.append(query())
                    time.sleep(1.5)
                watch.stop()
                bulk.join()
                times = sorted(b - a for a, b in queries)
                p50_ms, max_ms = round(statistics.median(times) * 1000, 1), round(times[-1] * 1000, 1)
                print(json.dumps({"run": run, "queries": len(times), "p50_ms": p50_ms, "max_ms": max_ms}), flush=True)
                for first, last in queries:
                    if last - first > args.slow * lone:
                        print(json.dumps({"query_at_s": round(first - began, 1), "ms": round((last - first) * 1000),
                                          **watch.used(first, last)}), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
