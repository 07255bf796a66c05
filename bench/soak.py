"""Soak test: many clients for a long while behind real nginx, on the tiny model.

    .venv/bin/python -m bench.soak                      (64 clients, 10 s warm-up, 60 s)
    .venv/bin/python -m bench.soak --clients 16 --seconds 10 --warmup 3

Starts the server as the tests do (gunicorn, 2 web workers, one CPU engine on the
tiny model) and Debian's nginx in front of it with deploy/nginx/nginx.conf
(rendered by deploy/nginx/render.py; nginx runs as an ordinary user). Each client
sends a mix of requests (one text or a batch, every kind, float and base64, long
inputs cut by max_length, rerank, tokenize, /health and /stats) and some bad ones
on purpose (they must get their 4xx). More clients than MAX_QUEUE_SIZE overload the
server on purpose: those requests must get 503 overloaded_error, and the client
waits Retry-After before its next one, as a well-behaved client does.

Prints the requests served, the answers by status, p50 and p99 latency, and the
resident memory of every process (gunicorn master, web workers, engine, resource
tracker, nginx) after the warm-up and at the end, both measured idle (the clients
are held between two requests for it), with the peak under load beside them.
Exits 1 when any answer was an error other than the deliberate ones, or a process
grew by more than 10 % between the two idle measurements.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testkit import nginx as nginx_proxy  # noqa: E402 - after the path is set for "python bench/soak.py"
from testkit import procs  # noqa: E402
from testkit.model_builder import build_model  # noqa: E402
from testkit.server import Server  # noqa: E402

TOKEN = "soak-test-token"
GROWTH_LIMIT = 0.10
WORDS = ["alpha", "beta", "gamma", "дельта", "эпсилон", "中文", "عربي", "émoji", "river", "stone", "cloud", "rain",
         "wind", "fire", "light", "night", "day", "sea", "sky", "road", "city", "tree", "leaf"]


@dataclass(frozen=True)
class Call:
    kind: str
    method: str
    path: str
    body: bytes | None
    expect: int  # the status a correct server gives


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words))


def next_call(rng: random.Random) -> Call:
    """One request of the mix; the weights are the share of each kind."""
    kind = rng.choices(
        ["query", "document", "batch", "long", "base64", "rerank", "tokenize", "health", "stats", "bad"],
        weights=[25, 15, 15, 8, 8, 8, 5, 5, 3, 8])[0]
    post = lambda body, path="/v1/embeddings": Call(kind, "POST", path, orjson.dumps(body), 200)  # noqa: E731
    if kind == "query":
        return post({"input": _text(rng, rng.randint(2, 12)), "return_sparse": False, "return_colbert": False})
    if kind == "document":
        return post({"input": _text(rng, rng.randint(20, 120))})
    if kind == "batch":
        return post({"input": [_text(rng, rng.randint(3, 60)) for _ in range(rng.randint(2, 16))],
                     "return_colbert": rng.random() < 0.3})
    if kind == "long":
        return post({"input": _text(rng, 3000), "max_length": rng.choice([128, 512, 2048])})
    if kind == "base64":
        return post({"input": [_text(rng, 30), _text(rng, 5)], "encoding_format": "base64"})
    if kind == "rerank":
        return post({"query": _text(rng, 4), "documents": [_text(rng, rng.randint(5, 40)) for _ in range(4)]},
                    "/v1/rerank")
    if kind == "tokenize":
        return post({"input": _text(rng, 50)}, "/tokenize")
    if kind in ("health", "stats"):
        return Call(kind, "GET", f"/{kind}", None, 200)
    bad = rng.choice([b"{", b'{"input": 5}', b'{"input": ""}', b'{"input": "a", "max_length": 0}',
                      b'{"input": "a", "return_dense": false, "return_sparse": false, "return_colbert": false}'])
    return Call(kind, "POST", "/v1/embeddings", bad, 400)


@dataclass
class Tally:
    """What the clients saw; ``measuring`` is off during the warm-up."""

    measuring: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter = field(default_factory=Counter)  # (status, label) -> count
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def record(self, call: Call, status: int, label: str, seconds: float) -> None:
        with self.lock:
            if not self.measuring:
                return
            self.answers[(status, label)] += 1
            if status == call.expect:
                if status == 200:
                    self.latencies.append(seconds)
            elif not (status == 503 and label == "overloaded_error"):
                self.errors[f"{call.kind}: {status} {label}"] += 1


@dataclass
class Load:
    """The clients' switches: ``gate`` closed holds them between requests, so the
    memory can be measured idle; ``busy`` counts the requests under way."""

    stop: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    busy: int = 0

    def quiesce(self, timeout: float = 140) -> None:
        self.gate.clear()
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the engine lets go of its last batch

    def finish(self) -> None:
        self.stop.set()
        self.gate.set()


def client(port: int, seed: int, tally: Tally, load: Load) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=130)
    while True:
        load.gate.wait()
        if load.stop.is_set():
            return
        call = next_call(rng)
        with load.lock:
            load.busy += 1
        started = time.perf_counter()
        try:
            conn.request(call.method, call.path, body=call.body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            tally.record(call, 0, type(exc).__name__, time.perf_counter() - started)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=130)
            continue
        finally:
            with load.lock:
                load.busy -= 1
        seconds = time.perf_counter() - started
        label = ""
        if response.status != 200:
            try:
                label = orjson.loads(data)["error"]["type"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                label = "not the JSON error shape"
        tally.record(call, response.status, label, seconds)
        if response.status == 503:
            load.stop.wait(min(float(response.getheader("Retry-After", "1")), 1.0))


# -- processes and memory ------------------------------------------------------------------


def processes(server: Server, nginx: subprocess.Popen) -> dict[int, str]:
    """pid -> role, for every process of the server and of nginx."""
    roles = {server.process.pid: "gunicorn master", nginx.pid: "nginx master"}
    for p in procs.children(server.process.pid):
        if "spawn_main" in p.cmdline:
            roles[p.pid] = "engine"
        elif "resource_tracker" in p.cmdline:
            roles[p.pid] = "resource tracker"
        else:
            roles[p.pid] = "web worker"
    for p in procs.children(nginx.pid):
        roles[p.pid] = "nginx worker"
    return roles


def start_nginx(prefix: Path, backend_port: int) -> tuple[subprocess.Popen[bytes], int]:
    return nginx_proxy.start(prefix, [f"127.0.0.1:{backend_port}"])


# -- the run ------------------------------------------------------------------------------


def run(clients: int, seconds: float, warmup: float, workdir: Path, rss_every: float = 0) -> list[str]:
    """Run the soak and print its report; returns what failed (nothing: a pass)."""
    model = build_model(ROOT / "models" / "bge-m3-tiny", "tiny")
    server = Server(model, workdir / "server.log", API_TOKEN=TOKEN, LOG_LEVEL="WARNING").start()
    nginx, port = None, 0
    try:
        nginx, port = start_nginx(workdir / "nginx", server.port)
        tally, load = Tally(), Load()
        threads = [threading.Thread(target=client, args=(port, seed, tally, load), daemon=True)
                   for seed in range(clients)]
        for thread in threads:
            thread.start()
        load.gate.set()
        time.sleep(warmup)
        # Memory is compared idle, after the warm-up and at the end: under load it
        # swings by the size of the batch in hand (hundreds of MiB for long inputs).
        load.quiesce()
        roles = processes(server, nginx)
        start_rss = {pid: procs.rss_mb(pid) for pid in roles}
        peak = dict(start_rss)
        load.gate.set()
        tally.measuring = True
        started = last_print = time.monotonic()
        while (now := time.monotonic()) < started + seconds:
            time.sleep(min(1.0, started + seconds - now))
            for pid in roles:
                peak[pid] = max(peak[pid], procs.rss_mb(pid))
            if rss_every and time.monotonic() - last_print >= rss_every:
                last_print = time.monotonic()
                print(f"rss at {last_print - started:5.0f} s:",
                      ", ".join(f"{roles[pid]} {procs.rss_mb(pid):.1f}" for pid in sorted(roles)), flush=True)
        tally.measuring = False
        elapsed = time.monotonic() - started
        load.quiesce()
        end_rss = {pid: procs.rss_mb(pid) for pid in roles}
        load.finish()
        for thread in threads:
            thread.join(140)
        gone = [pid for pid, role in processes(server, nginx).items() if pid not in roles]
        return report(clients, seconds, warmup, elapsed, tally, roles, start_rss, end_rss, peak, gone)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        server.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def report(clients: int, seconds: float, warmup: float, elapsed: float, tally: Tally, roles: dict[int, str],
           start_rss: dict[int, float], end_rss: dict[int, float], peak: dict[int, float],
           new_processes: list[int]) -> list[str]:
    served = sum(tally.answers.values())
    print(f"soak: {clients} clients for {seconds:.0f} s after a {warmup:.0f} s warm-up, through nginx to "
          "gunicorn (2 web workers) and one CPU engine, tiny model")
    print(f"requests served: {served} ({served / elapsed:.1f}/s)")
    print("answers by status:")
    for (status, label), count in sorted(tally.answers.items()):
        note = {200: "", 400: "  (bad on purpose)"}.get(status, "")
        if status == 503 and label == "overloaded_error":
            note = "  (deliberate overload: more clients than MAX_QUEUE_SIZE)"
        print(f"  {status or 'no answer'} {label}: {count}{note}")
    print(f"errors other than the deliberate ones: {sum(tally.errors.values())}")
    for what, count in tally.errors.most_common():
        print(f"  {what}: {count}")
    print(f"latency of the 200s: p50 {percentile(tally.latencies, 50) * 1000:.1f} ms, "
          f"p99 {percentile(tally.latencies, 99) * 1000:.1f} ms")
    print("resident memory, MiB, idle   pid  after warm-up     end   growth   (peak under load)")
    grown = []
    for pid, role in sorted(roles.items(), key=lambda item: item[1]):
        before, after = start_rss[pid], end_rss[pid]
        growth = (after - before) / before if before else 0.0
        if growth > GROWTH_LIMIT:
            grown.append(f"{role} {pid}")
        print(f"  {role:<20} {pid:>8} {before:>14.1f} {after:>7.1f} {growth:>+8.1%}   ({peak[pid]:.1f})")
    if new_processes:
        print(f"processes started during the run (a restart?): {new_processes}")
    failures = []
    if tally.errors:
        failures.append("errors other than the deliberate ones")
    if grown:
        failures.append(f"grew by more than {GROWTH_LIMIT:.0%}: {', '.join(grown)}")
    if new_processes:
        failures.append("a process was restarted")
    print("verdict:", "PASS" if not failures else "FAIL: " + "; ".join(failures))
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--rss-every", type=float, default=0, help="also print every process's RSS this often")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embsvc-soak-") as workdir:
        os.chmod(workdir, 0o755)  # nginx, as another user, walks into it
        sys.exit(1 if run(args.clients, args.seconds, args.warmup, Path(workdir), args.rss_every) else 0)


if __name__ == "__main__":
    main()
