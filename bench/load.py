"""HTTP load generators for the benchmark: concurrent clients over keep-alive connections."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
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
            "max_ms": round(max(lat, default=float("nan")) * 1000, 2),
        }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))]


def run(url: str, token: str, bodies: list[dict], concurrency: int) -> LoadResult:
    """Send every body once, from ``concurrency`` clients taking the next one in turn."""
    lock, cursor = threading.Lock(), iter(bodies)
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "tokens": 0}

    def client() -> None:
        session = _session(token)
        while True:
            with lock:
                body = next(cursor, None)
            if body is None:
                return
            _send(session, url, body, lock, latencies, counts)

    started = _run_threads(client, concurrency)
    return LoadResult(len(bodies), counts["errors"], counts["tokens"], time.perf_counter() - started, latencies)


def closed_loop(url: str, token: str, bodies: list[dict], clients: int, seconds: float,
                tokens: list[int] | None = None) -> LoadResult:
    """``clients`` clients each sending the next of ``bodies`` (in turn, round and round) as soon
    as its last answer came, for ``seconds``: a steady load, such as an indexer's. ``tokens``:
    each body's, known beforehand, so that the client need not parse large answers (its CPU
    is the server's on a small machine)."""
    lock, position, deadline = threading.Lock(), iter(range(10**9)), time.perf_counter() + seconds
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "tokens": 0}

    def client() -> None:
        session = _session(token)
        while time.perf_counter() < deadline:
            with lock:
                index = next(position) % len(bodies)
            _send(session, url, bodies[index], lock, latencies, counts, None if tokens is None else tokens[index])

    started = _run_threads(client, clients)
    return LoadResult(counts["requests"], counts["errors"], counts["tokens"], time.perf_counter() - started,
                      latencies)


def paced(url: str, token: str, body: dict, every_s: float, seconds: float) -> LoadResult:
    """One client sending ``body`` every ``every_s`` (whatever the answers take): a person's queries."""
    lock, latencies = threading.Lock(), []
    counts = {"requests": 0, "errors": 0, "tokens": 0}
    session, started = _session(token), time.perf_counter()
    sent = 0
    while (due := started + sent * every_s) < started + seconds:
        time.sleep(max(0.0, due - time.perf_counter()))
        _send(session, url, body, lock, latencies, counts)
        sent += 1
    return LoadResult(counts["requests"], counts["errors"], counts["tokens"], time.perf_counter() - started,
                      latencies)


def _session(token: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def _send(session: requests.Session, url: str, body: dict, lock: threading.Lock, latencies: list[float],
          counts: dict[str, int], tokens: int | None = None) -> None:
    started = time.perf_counter()
    response = session.post(f"{url}/v1/embeddings", data=orjson.dumps(body), timeout=600)
    elapsed = time.perf_counter() - started
    with lock:
        counts["requests"] += 1
        if response.status_code == 200:
            latencies.append(elapsed)
            if tokens is None:
                tokens = orjson.loads(response.content).get("usage", {}).get("total_tokens", 0)
            counts["tokens"] += tokens
        else:
            counts["errors"] += 1


def _run_threads(target: Callable[[], None], count: int) -> float:
    """Start ``count`` threads on ``target`` and wait for them; returns when they started."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return started


def wait_listening(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


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
