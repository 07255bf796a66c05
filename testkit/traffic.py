"""The clients of the soaks (bench/chaos.py, with and without faults): a mix of requests, many client
threads that send them one after another, and a tally of what came back.

Each client keeps one HTTP/1.1 connection (a new one after an error) and sends a request
drawn from the mix (one text or a batch, every kind, float and base64, long inputs cut by
max_length, rerank, tokenize, /health and /stats, some bad ones on purpose that must get
their 4xx). On a 503 it waits Retry-After (at most a second), as a well-behaved client does.
An exception instead of an answer is recorded with status 0: the request got no answer.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from testkit import procs
from testkit.server import Server

WORDS = ["alpha", "beta", "gamma", "дельта", "эпсилон", "中文", "عربي", "émoji", "river", "stone", "cloud", "rain",
         "wind", "fire", "light", "night", "day", "sea", "sky", "road", "city", "tree", "leaf"]
# The share of each kind of request in the soak's mix.
SOAK_MIX = {"query": 25, "document": 15, "batch": 15, "long": 8, "base64": 8, "rerank": 8, "tokenize": 5,
            "health": 5, "stats": 3, "bad": 8}
_BAD = [b"{", b'{"input": 5}', b'{"input": ""}', b'{"input": "a", "max_length": 0}',
        b'{"input": "a", "return_dense": false, "return_sparse": false, "return_colbert": false}']


@dataclass(frozen=True)
class Call:
    kind: str
    method: str
    path: str
    body: bytes | None
    expect: int  # the status a correct server gives


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words))


def _post(kind: str, body: object, path: str = "/v1/embeddings") -> Call:
    return Call(kind, "POST", path, orjson.dumps(body), 200)


_BUILDERS: dict[str, Callable[[str, random.Random], Call]] = {
    "query": lambda k, rng: _post(k, {"input": text(rng, rng.randint(2, 12)), "return_sparse": False,
                                      "return_colbert": False}),
    "document": lambda k, rng: _post(k, {"input": text(rng, rng.randint(20, 120))}),
    "batch": lambda k, rng: _post(k, {"input": [text(rng, rng.randint(3, 60)) for _ in range(rng.randint(2, 16))],
                                      "return_colbert": rng.random() < 0.3}),
    "long": lambda k, rng: _post(k, {"input": text(rng, 3000), "max_length": rng.choice([128, 512, 2048])}),
    # Eight long texts with all three kinds: the requests that take the most shared memory.
    "long_all_kinds": lambda k, rng: _post(k, {"input": [text(rng, 400) for _ in range(8)], "return_dense": True,
                                               "return_sparse": True, "return_colbert": True}),
    "base64": lambda k, rng: _post(k, {"input": [text(rng, 30), text(rng, 5)], "encoding_format": "base64"}),
    "rerank": lambda k, rng: _post(k, {"query": text(rng, 4),
                                       "documents": [text(rng, rng.randint(5, 40)) for _ in range(4)]}, "/v1/rerank"),
    "tokenize": lambda k, rng: _post(k, {"input": text(rng, 50)}, "/tokenize"),
    "health": lambda k, rng: Call(k, "GET", "/health", None, 200),
    "stats": lambda k, rng: Call(k, "GET", "/stats", None, 200),
    "bad": lambda k, rng: Call(k, "POST", "/v1/embeddings", rng.choice(_BAD), 400),
}


def next_call(rng: random.Random, mix: dict[str, int] = SOAK_MIX) -> Call:
    """One request of ``mix`` (kind -> weight)."""
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    return _BUILDERS[kind](kind, rng)


@dataclass
class Tally:
    """What the clients saw; ``measuring`` is off during the warm-up. ``errors``: answers other
    than the expected status and the deliberate overload."""

    measuring: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: Counter[tuple[int, str]] = field(default_factory=Counter)  # (status, label) -> count
    errors: Counter[str] = field(default_factory=Counter)
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


def error_label(data: bytes) -> str:
    """The error type of an answer in the API's JSON shape."""
    try:
        return str(orjson.loads(data)["error"]["type"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "not the JSON error shape"


def client(port: int, seed: int, tally: Tally, load: Load, token: str, mix: dict[str, int] = SOAK_MIX,
           label: Callable[[int, bytes], str] | None = None) -> None:
    """One client thread: requests of ``mix`` until ``load.stop``; ``label`` names a non-200 answer
    (by default its error type)."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=130)
    while True:
        load.gate.wait()
        if load.stop.is_set():
            return
        call = next_call(rng, mix)
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
        name = "" if response.status == 200 else (label or (lambda _, d: error_label(d)))(response.status, data)
        tally.record(call, response.status, name, seconds)
        if response.status == 503:
            load.stop.wait(min(float(response.getheader("Retry-After", "1")), 1.0))


def processes(server: Server, nginx_pid: int) -> dict[int, str]:
    """pid -> role, for every process of the server and of nginx."""
    roles = {server.process.pid: "gunicorn master", nginx_pid: "nginx master"}
    for p in procs.children(server.process.pid):
        if p.state == "Z":
            continue
        if "spawn_main" in p.cmdline:
            roles[p.pid] = "engine"
        elif "resource_tracker" in p.cmdline:
            roles[p.pid] = "resource tracker"
        else:
            roles[p.pid] = "web worker"
    for p in procs.children(nginx_pid):
        roles[p.pid] = "nginx worker"
    return roles
