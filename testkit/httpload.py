"""The HTTP/1.1 load generator of the benchmarks, fast enough for thousands of requests a second.

wrk is not on every machine (the GPU machine has none), and a client built on
``requests`` spends more CPU per request than the server it measures. Here each of a
few processes drives many keep-alive connections from one selector loop over raw
sockets: requests are encoded once up front, a response is read by its
Content-Length, and each connection sends its next request as soon as the last one
is answered. Requests sent after the warm-up and answered before the end are
counted; the latency of each is from its first byte sent to its last byte read.

    figures = httpload.run("127.0.0.1", 8000, [httpload.Request(post(...), weight=tokens)],
                           connections=64, processes=4, seconds=10, warmup_s=2).figures()

Three variants for requests that take seconds each (a CPU's bulk indexing): ``drain``
counts every request sent in the window, however late its answer, and measures to the
last answer; ``once`` sends each request once and ends when all are answered; ``pace_s``
holds each connection to one request per that many seconds (a person's queries).
``wrk`` drives the C load generator where one is installed.
"""

from __future__ import annotations

import math
import multiprocessing
import selectors
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import orjson

_RECV = 1 << 18
_DRAIN_S = 30.0  # the longest a connection's last answer is waited for after the end
_LONG_DRAIN_S = 900.0  # the same, where every request sent in the window is counted


@dataclass(frozen=True)
class Request:
    data: bytes  # the whole HTTP request
    weight: int = 0  # what it is worth (tokens, say), summed over the answered ones


def post(path: str, body: bytes, headers: dict[str, str] | None = None, host: str = "127.0.0.1") -> bytes:
    """An HTTP/1.1 POST of a JSON ``body`` on a keep-alive connection, as bytes."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Result:
    seconds: float  # the measured window
    latencies: list[float] = field(default_factory=list)  # of the counted 2xx answers
    weight: int = 0  # of the counted 2xx answers
    statuses: Counter[int] = field(default_factory=Counter)  # every counted answer; 0: a broken connection
    response_bytes: int = 0

    def merge(self, other: Result) -> None:
        self.seconds = max(self.seconds, other.seconds)
        self.latencies += other.latencies
        self.weight += other.weight
        self.statuses.update(other.statuses)
        self.response_bytes += other.response_bytes

    def figures(self, weight: str = "weight") -> dict[str, float]:
        """The counted answers' figures; ``weight`` names what the weights are (``tokens``: tokens_per_s)."""
        lat = sorted(self.latencies)
        ok, span = len(lat), self.seconds or math.nan
        return {
            "requests": ok, "errors": sum(self.statuses.values()) - ok, "seconds": round(self.seconds, 2),
            "requests_per_s": round(ok / span, 1), f"{weight}_per_s": round(self.weight / span, 1),
            "p50_ms": round(percentile(lat, 50) * 1000, 2), "p90_ms": round(percentile(lat, 90) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2), "max_ms": round(percentile(lat, 100) * 1000, 2),
            "response_mb_per_s": round(self.response_bytes / span / 1e6, 1),
        }


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ``values`` (nan when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Mode:
    """How requests are sent and counted beyond the plain window (see the module's docstring)."""

    drain: bool = False
    once: bool = False
    pace_s: float = 0.0


def run(host: str, port: int, requests: list[Request], connections: int, processes: int, seconds: float = math.inf,
        warmup_s: float = 0.0, *, drain: bool = False, once: bool = False, pace_s: float = 0.0) -> Result:
    """``connections`` in all, shared out over ``processes``, each cycling through its share of ``requests``
    (with ``once``, sending each once: ``seconds`` is then not needed)."""
    if math.isinf(seconds) and not once:
        raise ValueError("a load without once needs seconds")
    mode = Mode(drain or once, once, pace_s)
    processes = max(1, min(processes, connections))
    context = multiprocessing.get_context("spawn")  # no inherited threads or CUDA state
    pipes, workers = [], []
    for p in range(processes):
        mine = requests[p::processes] or requests
        count = connections // processes + (p < connections % processes)
        parent, child = context.Pipe()
        worker = context.Process(target=_worker, args=(host, port, mine, count, mode, child), daemon=True)
        worker.start()
        child.close()  # the worker's end: a worker that dies then reads as EOFError here, not a wait forever
        pipes.append(parent)
        workers.append(worker)
    for pipe in pipes:
        if pipe.recv() != "ready":  # connected: the window opens for all at once
            raise RuntimeError("a load process could not connect")
    start = time.monotonic() + 0.05
    for pipe in pipes:
        pipe.send((start, start + warmup_s, start + warmup_s + seconds))
    total = Result(0.0)
    for pipe, worker in zip(pipes, workers, strict=True):
        total.merge(pipe.recv())
        worker.join(10)
    return total


class _Conn:
    __slots__ = ("buffer", "close", "request", "sent", "sock", "started", "wanted")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.request: Request | None = None
        self.buffer, self.sent, self.started, self.wanted, self.close = bytearray(), 0, 0.0, -1, False


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _worker(host: str, port: int, requests: list[Request], connections: int, mode: Mode,
            pipe: Connection) -> None:
    conns = [_Conn(_connect(host, port)) for _ in range(connections)]
    pipe.send("ready")
    start, opens, closes = pipe.recv()
    time.sleep(max(0.0, start - time.monotonic()))
    pipe.send(_Loop(host, port, requests, conns, (opens, closes), mode).run())


class _Loop:
    """One process's connections: send, read the answer, count it, send the next."""

    def __init__(self, host: str, port: int, requests: list[Request], conns: list[_Conn],
                 window: tuple[float, float], mode: Mode) -> None:
        self.address, self.requests, self.conns, self.mode = (host, port), requests, conns, mode
        self.opens, self.closes = window
        # With drain, to the last counted answer, and at least the window.
        self.result = Result(0.0 if mode.once else self.closes - self.opens)
        self.selector = selectors.DefaultSelector()
        self.busy, self.sent = 0, 0
        self.waiting: list[tuple[float, _Conn]] = []  # paced connections, with when each may send again

    def run(self) -> Result:
        for conn in self.conns:
            self.selector.register(conn.sock, selectors.EVENT_WRITE, conn)
            self._send_next(conn, time.monotonic())
        deadline = self.closes + (_LONG_DRAIN_S if self.mode.drain else _DRAIN_S)
        while (self.busy or self.waiting) and time.monotonic() < deadline:
            for key, events in self.selector.select(self._timeout()):
                conn: _Conn = key.data
                if events & selectors.EVENT_WRITE:
                    self._write(conn)
                else:
                    self._read(conn)
            self._send_due(time.monotonic())
        return self.result

    def _timeout(self) -> float:
        if not self.waiting:
            return 0.5
        return min(0.5, max(0.0, min(due for due, _ in self.waiting) - time.monotonic()))

    def _send_due(self, now: float) -> None:
        due = [conn for at, conn in self.waiting if at <= now]
        self.waiting = [(at, conn) for at, conn in self.waiting if at > now]
        for conn in due:
            self._send_next(conn, now, paced=False)

    def _send_next(self, conn: _Conn, now: float, paced: bool = True) -> None:
        if now >= self.closes or (self.mode.once and self.sent >= len(self.requests)):
            self._close(conn)
            return
        if paced and self.mode.pace_s and conn.request is not None and now < conn.started + self.mode.pace_s:
            self.selector.unregister(conn.sock)  # nothing to read or write until it sends again
            self.waiting.append((conn.started + self.mode.pace_s, conn))
            return
        conn.request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        conn.buffer.clear()
        conn.sent, conn.wanted, conn.started = 0, -1, now
        self.busy += 1
        _watch(self.selector, conn, selectors.EVENT_WRITE)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.request is not None
        try:
            conn.sent += conn.sock.send(memoryview(conn.request.data)[conn.sent:])
        except BlockingIOError:
            return
        except OSError:
            self._broken(conn)
            return
        if conn.sent == len(conn.request.data):
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._broken(conn)
            return
        conn.buffer += chunk
        if conn.wanted < 0:
            conn.wanted, conn.close = _response_size(conn.buffer)
        if 0 <= conn.wanted <= len(conn.buffer):
            self._answered(conn, int(conn.buffer[9:12]), time.monotonic())

    def _answered(self, conn: _Conn, status: int, now: float) -> None:
        self.busy -= 1
        if conn.started >= self.opens and (now <= self.closes or self.mode.drain):
            assert conn.request is not None
            if self.mode.drain:
                self.result.seconds = max(self.result.seconds, now - self.opens)
            self.result.statuses[status] += 1
            self.result.response_bytes += len(conn.buffer)
            if 200 <= status < 300:
                self.result.latencies.append(now - conn.started)
                self.result.weight += conn.request.weight
        if conn.close:  # the server ends this connection: the next request goes on a new one
            self._reconnect(conn)
        self._send_next(conn, now)

    def _broken(self, conn: _Conn) -> None:
        """A connection closed or reset in the middle of a request: an error, then a new connection."""
        self.busy -= 1
        if conn.started >= self.opens:
            self.result.statuses[0] += 1
        self._reconnect(conn)
        self._send_next(conn, time.monotonic())

    def _reconnect(self, conn: _Conn) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()
        conn.sock = _connect(*self.address)
        self.selector.register(conn.sock, selectors.EVENT_WRITE, conn)

    def _close(self, conn: _Conn) -> None:
        if conn.sock in self.selector.get_map():
            self.selector.unregister(conn.sock)
        conn.sock.close()


def _watch(selector: selectors.BaseSelector, conn: _Conn, events: int) -> None:
    """Watch ``conn`` for ``events``, registering it again after a paced wait."""
    if conn.sock in selector.get_map():
        selector.modify(conn.sock, events, conn)
    else:
        selector.register(conn.sock, events, conn)


def _response_size(buffer: bytearray) -> tuple[int, bool]:
    """The whole response's size once its head is in ``buffer`` (-1 until then), and whether
    the server closes the connection after it."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return -1, False
    size, close = -1, False
    for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            size = end + 4 + int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    if size < 0:
        raise ValueError("a response without Content-Length: " + bytes(buffer[:end]).decode(errors="replace"))
    return size, close


def wait_listening(port: int, timeout: float = 60.0) -> None:
    """Until something accepts connections on ``port`` of this machine."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port}") from None
            time.sleep(0.1)


def wrk(url: str, token: str, body: Mapping[str, object], connections: int, seconds: int,
        workdir: Path) -> dict[str, float]:
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
