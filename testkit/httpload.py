"""A closed-loop HTTP/1.1 load generator fast enough for thousands of requests a second from Python.

wrk is not on every machine (the GPU machine has none), and a client built on
``requests`` spends more CPU per request than the server it measures. Here each of a
few processes drives many keep-alive connections from one selector loop over raw
sockets: requests are encoded once up front, a response is read by its
Content-Length, and each connection sends its next request as soon as the last one
is answered. Requests sent after the warm-up and answered before the end are
counted; the latency of each is from its first byte sent to its last byte read.

    figures = httpload.run("127.0.0.1", 8000, [httpload.Request(post(...), weight=tokens)],
                           connections=64, processes=4, seconds=10, warmup_s=2).figures()
"""

from __future__ import annotations

import multiprocessing
import selectors
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

_RECV = 1 << 18
_DRAIN_S = 30.0  # the longest a connection's last answer is waited for after the end


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
        self.latencies += other.latencies
        self.weight += other.weight
        self.statuses.update(other.statuses)
        self.response_bytes += other.response_bytes

    def figures(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        ok = len(lat)
        return {
            "requests": ok, "errors": sum(self.statuses.values()) - ok, "seconds": round(self.seconds, 2),
            "requests_per_s": round(ok / self.seconds, 1), "weight_per_s": round(self.weight / self.seconds, 1),
            "p50_ms": round(percentile(lat, 50) * 1000, 2), "p90_ms": round(percentile(lat, 90) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2), "max_ms": round(percentile(lat, 100) * 1000, 2),
            "response_mb_per_s": round(self.response_bytes / self.seconds / 1e6, 1),
        }


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))]


def run(host: str, port: int, requests: list[Request], connections: int, processes: int, seconds: float,
        warmup_s: float = 0.0) -> Result:
    """``connections`` in all, shared out over ``processes``, each cycling through its share of ``requests``."""
    processes = max(1, min(processes, connections))
    context = multiprocessing.get_context("spawn")  # no inherited threads or CUDA state
    pipes, workers = [], []
    for p in range(processes):
        mine = requests[p::processes] or requests
        count = connections // processes + (p < connections % processes)
        parent, child = context.Pipe()
        worker = context.Process(target=_worker, args=(host, port, mine, count, child), daemon=True)
        worker.start()
        pipes.append(parent)
        workers.append(worker)
    for pipe in pipes:
        if pipe.recv() != "ready":  # connected: the window opens for all at once
            raise RuntimeError("a load process could not connect")
    start = time.monotonic() + 0.05
    for pipe in pipes:
        pipe.send((start + warmup_s, start + warmup_s + seconds))
    total = Result(seconds)
    for pipe, worker in zip(pipes, workers, strict=True):
        total.merge(pipe.recv())
        worker.join(10)
    return total


class _Conn:
    __slots__ = ("buffer", "close", "next", "request", "sent", "sock", "started", "wanted")

    def __init__(self, sock: socket.socket, first: int) -> None:
        self.sock, self.next = sock, first
        self.request: Request | None = None
        self.buffer, self.sent, self.started, self.wanted, self.close = bytearray(), 0, 0.0, -1, False


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _worker(host: str, port: int, requests: list[Request], connections: int, pipe: Connection) -> None:
    conns = [_Conn(_connect(host, port), i) for i in range(connections)]
    pipe.send("ready")
    opens, closes = pipe.recv()
    pipe.send(_Loop(host, port, requests, conns, opens, closes).run())


class _Loop:
    """One process's connections: send, read the answer, count it, send the next."""

    def __init__(self, host: str, port: int, requests: list[Request], conns: list[_Conn], opens: float,
                 closes: float) -> None:
        self.address, self.requests, self.conns = (host, port), requests, conns
        self.opens, self.closes = opens, closes
        self.result = Result(closes - opens)
        self.selector = selectors.DefaultSelector()
        self.busy = 0

    def run(self) -> Result:
        for conn in self.conns:
            self.selector.register(conn.sock, selectors.EVENT_WRITE, conn)
            self._send_next(conn, time.monotonic())
        deadline = self.closes + _DRAIN_S
        while self.busy and time.monotonic() < deadline:
            for key, events in self.selector.select(0.5):
                conn: _Conn = key.data
                if events & selectors.EVENT_WRITE:
                    self._write(conn)
                else:
                    self._read(conn)
        return self.result

    def _send_next(self, conn: _Conn, now: float) -> None:
        if now >= self.closes:
            self._close(conn)
            return
        conn.request = self.requests[conn.next % len(self.requests)]
        conn.next += len(self.conns)
        conn.buffer.clear()
        conn.sent, conn.wanted, conn.started = 0, -1, now
        self.busy += 1
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
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
        if conn.started >= self.opens and now <= self.closes:
            assert conn.request is not None
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
        self.selector.unregister(conn.sock)
        conn.sock.close()


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
