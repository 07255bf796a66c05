"""The web worker reads a request whole on its event loop before a thread takes it
(embsvc/master/buffered_worker.py): over socket pairs, with the thread pool replaced by a list."""

from __future__ import annotations

import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from gunicorn.config import Config
from gunicorn.workers.gthread import TConn, ThreadWorker

from embsvc.master.buffered_worker import BufferedThreadWorker

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, **limits: float) -> None:
        self.handed: list[TConn] = []
        monkeypatch.setattr(ThreadWorker, "enqueue_req", lambda worker, conn: self.handed.append(conn))
        cls = BufferedThreadWorker.with_limits(**{"read_timeout_s": 5.0, "read_deadline_s": 60.0,
                                                  "max_body": 1 << 20, "buffer_budget": 1 << 20, **limits})
        self.worker = cls(0, os.getpid(), [], None, 30, Config(), logging.getLogger("test.worker"))
        self.worker.poller = selectors.DefaultSelector()
        self.clients: list[socket.socket] = []

    def connect(self, first: bytes = b"") -> socket.socket:
        client, server = socket.socketpair()
        self.clients.append(client)
        client.sendall(first)
        self.worker.nr_conns += 1
        self.worker.enqueue_req(TConn(self.worker.cfg, server, ("127.0.0.1", 1), ("127.0.0.1", 2)))
        return client

    def spin(self, seconds: float = 0.05) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.worker.wait_for_and_dispatch_events(0.01)

    def held(self, conn: TConn) -> bytes:
        return conn.parser.unreader.buf.getvalue()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.worker.poller.close()
        self.worker.tmp.close()


@pytest.fixture
def harness(monkeypatch) -> Iterator[Harness]:
    made: list[Harness] = []

    def make(**limits: float) -> Harness:
        made.append(Harness(monkeypatch, **limits))
        return made[-1]

    yield make  # type: ignore[misc]
    for h in made:
        h.close()


def test_a_thread_gets_the_request_only_once_it_is_whole(harness):
    h = harness()
    request = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"input\":1}"[:-1]
    client = h.connect(request[:20])
    h.spin()
    client.sendall(request[20:-3])
    h.spin()
    assert h.handed == []
    client.sendall(request[-3:])
    h.spin()
    assert len(h.handed) == 1 and h.held(h.handed[0]) == request and h.handed[0].data_ready
    assert h.worker.buffered == 0 and not h.worker.reading


def test_a_stalled_request_is_answered_408_and_a_silent_one_is_closed(harness):
    h = harness(read_timeout_s=0.1)
    partial, silent = h.connect(b"GET /health HTTP/1.1\r\nHo"), h.connect()
    h.spin()
    time.sleep(0.15)
    h.worker.murder_pending()
    assert partial.recv(4096).startswith(b"HTTP/1.1 408 Request Timeout\r\n") and silent.recv(4096) == b""
    assert h.worker.nr_conns == 0 and h.handed == []


def test_a_trickling_request_is_cut_at_the_deadline(harness):
    h = harness(read_timeout_s=1.0, read_deadline_s=0.3)
    client = h.connect(b"GET /health HTTP/1.1\r\n")
    started = time.monotonic()
    while h.worker.reading and time.monotonic() - started < 2:
        client.sendall(b"X: y\r\n")  # never still for the read timeout
        h.spin(0.05)
        h.worker.murder_pending()
    assert 0.3 <= time.monotonic() - started < 0.5
    assert client.recv(4096).startswith(b"HTTP/1.1 408 ") and h.handed == []


def test_past_the_budget_large_bodies_wait_and_small_requests_do_not(harness):
    h = harness(buffer_budget=100_000)
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    big = []
    for _ in range(2):
        big.append(h.connect(head + b"a" * 70_000))
        h.spin(0.1)
    big[1].sendall(b"a" * 1000)  # more of a large body past the budget: not read for now
    h.spin(0.1)
    assert h.worker.buffered >= 100_000 and len(h.worker.paused) == 1
    h.connect(HEALTH)
    h.spin()
    assert [h.held(c) for c in h.handed] == [HEALTH]  # the probe is read beside the waiting body
    big[0].close()  # that client gives up: its bytes are released, and the waiting body is read on
    h.spin(0.1)
    h.worker.murder_pending()
    big[1].sendall(b"a" * 29_000)
    h.spin(0.2)
    assert not h.worker.paused and h.worker.buffered == 0 and h.worker.nr_conns == 2
    assert len(h.handed) == 2 and len(h.held(h.handed[1])) == len(head) + 100_000


def test_pipelined_requests_go_one_at_a_time(harness):
    h = harness()
    h.connect(HEALTH * 2)
    h.spin()
    assert len(h.handed) == 1 and h.held(h.handed[0]) == HEALTH * 2  # the parser takes the first, then the next


def test_what_framing_cannot_read_goes_to_gthread_as_it_comes(harness):
    h = harness()
    h.worker.cfg.set("protocol", "uwsgi")  # not HTTP: gthread's own reading
    h.connect()
    assert len(h.handed) == 1 and not h.worker.reading


class _Pool:
    """The worker's thread pool as ``_next_request_here`` sees it: its queue of connections."""

    def __init__(self) -> None:
        self._work_queue: queue.SimpleQueue[object] = queue.SimpleQueue()


def _answered(h: Harness, linger_s: float = 0.05) -> tuple[socket.socket, TConn]:
    """A kept-alive connection whose request a thread has just answered."""
    h.worker.linger_s = linger_s
    h.worker.tpool = _Pool()
    client = h.connect(HEALTH)
    h.spin()
    conn = h.handed[0]
    conn.parser.unreader.take_buffered()  # the thread's parser read it
    return client, conn


def test_the_next_request_of_a_busy_client_stays_with_its_thread(harness):
    h = harness()
    client, conn = _answered(h)
    threading.Timer(0.01, client.sendall, [HEALTH]).start()
    assert h.worker._next_request_here(conn) and h.held(conn) == HEALTH


def test_a_quiet_or_partial_next_request_goes_back_to_the_event_loop(harness):
    h = harness()
    client, conn = _answered(h, linger_s=0.02)
    began = time.monotonic()
    assert not h.worker._next_request_here(conn) and h.held(conn) == b""
    assert 0.015 < time.monotonic() - began < 1.0
    client.sendall(HEALTH[:10])
    assert not h.worker._next_request_here(conn) and h.held(conn) == HEALTH[:10]  # the loop reads the rest


def test_a_thread_waits_for_no_next_request_while_connections_wait_for_threads(harness):
    h = harness()
    client, conn = _answered(h)
    client.sendall(HEALTH)
    h.worker.tpool._work_queue.put(object())
    assert not h.worker._next_request_here(conn) and h.held(conn) == b""  # not read: the loop sees it readable
    h.worker.tpool = _Pool()
    h.worker.alive = False  # stopping: the loop answers it with "Connection: close"
    assert not h.worker._next_request_here(conn) and h.held(conn) == b""
