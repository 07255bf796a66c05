"""HTTP load generators for the benchmark: concurrent clients over keep-alive connections."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import requests


@dataclass
class LoadResult:
    requests: int
    errors: int
    tokens: int
    seconds: float
    latencies: list[float]

    def figures(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_s": round(self.tokens / self.seconds, 1),
            "requests_per_s": round(self.requests / self.seconds, 1),
            "p50_ms": round(percentile(lat, 50) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2),
        }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))]


def run(url: str, token: str, bodies: list[dict], concurrency: int) -> LoadResult:
    """Send every body once, from ``concurrency`` clients taking the next one in turn."""
    lock, cursor = threading.Lock(), iter(bodies)
    latencies: list[float] = []
    counts = {"errors": 0, "tokens": 0}

    def client() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while True:
            with lock:
                body = next(cursor, None)
            if body is None:
                return
            started = time.perf_counter()
            response = session.post(f"{url}/v1/embeddings", data=orjson.dumps(body), timeout=600)
            elapsed = time.perf_counter() - started
            with lock:
                if response.status_code == 200:
                    latencies.append(elapsed)
                    counts["tokens"] += orjson.loads(response.content)["usage"]["total_tokens"]
                else:
                    counts["errors"] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(len(bodies), counts["errors"], counts["tokens"], time.perf_counter() - started, latencies)


def wrk(url: str, token: str, body: dict, connections: int, seconds: int, workdir: Path) -> dict[str, float]:
    """Many short requests from wrk (a C load generator, light on the shared CPU)."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {orjson.dumps(orjson.dumps(body).decode()).decode()}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT %d %d %d %f %f\\n", summary.requests, summary.errors.status,\n'
        "    summary.duration, latency:percentile(50), latency:percentile(99)))\n"
        "end\n")
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
                          f"{url}/v1/embeddings"], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    count, bad_status, duration_us, p50_us, p99_us = line.split()[1:]
    return {"requests": int(count), "non_2xx": int(bad_status),
            "requests_per_s": round(int(count) / (int(duration_us) / 1e6), 1),
            "p50_ms": round(float(p50_us) / 1000, 2), "p99_ms": round(float(p99_us) / 1000, 2)}
