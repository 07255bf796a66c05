"""Slow clients against real gunicorn with nothing in front: they hold no thread, /health
answers beside them, and READ_TIMEOUT_S / READ_DEADLINE_S end them with a 408 or a close.

The attacks: headers sent a byte at a time, a body sent a byte at a time, a chunked body
that never ends, and a request that stops halfway; 100 connections at once.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from testkit.server import Server
from tests.e2e.conftest import AUTH, TOKEN, dense, embed

pytestmark = pytest.mark.slow

READ_TIMEOUT_S, READ_DEADLINE_S = 1.0, 3.0
SWEEP_S = 1.0  # the worker looks for late requests about once a second
TICK_S = 0.4  # each trickling client sends a byte this often: never stalled long enough to be cut for it
SLOW = 100


@pytest.fixture(scope="module")
def slow_server(tiny_model, tmp_path_factory) -> Server:
    server = Server(tiny_model, tmp_path_factory.mktemp("slow") / "server.log", API_TOKEN=TOKEN,
                    READ_TIMEOUT_S=str(READ_TIMEOUT_S), READ_DEADLINE_S=str(READ_DEADLINE_S),
                    WEB_CONCURRENCY="2").start()
    yield server
    assert server.stop() == 0, server.log()


def _open(server: Server, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(first)
    sock.setblocking(False)
    return sock


_ATTACKS: dict[str, tuple[bytes, bytes]] = {  # what each sends first, then again and again
    "header trickle": (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a"),
    "body trickle": (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{", b" "),
    "endless chunked": (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                        b"1\r\n \r\n"),
}


def _ended(sock: socket.socket) -> bytes | None:
    """What the server answered once it is done with the connection (b"" for a close), else None."""
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""
    return data


def _health_s(server: Server) -> float:
    started = time.monotonic()
    response = requests.get(f"{server.url}/health", timeout=5)
    assert response.status_code == 200
    return time.monotonic() - started


def test_trickling_clients_starve_nothing_and_end_in_408(slow_server):
    clients = [(name, _open(slow_server, first), more)
               for i in range(SLOW) for name, (first, more) in [list(_ATTACKS.items())[i % len(_ATTACKS)]]]
    started = time.monotonic()
    ended: dict[int, tuple[str, bytes, float]] = {}
    health: list[float] = []
    while len(ended) < SLOW and time.monotonic() - started < READ_DEADLINE_S + SWEEP_S + 3:
        for i, (name, sock, more) in enumerate(clients):
            if i in ended:
                continue
            answer = _ended(sock)
            if answer is None:
                try:
                    sock.send(more)
                except OSError:
                    answer = b""
            if answer is not None:
                ended[i] = (name, answer, time.monotonic() - started)
        health.append(_health_s(slow_server))
        time.sleep(TICK_S)
    for _, sock, _ in clients:
        sock.close()
    assert len(health) >= 4 and max(health) < 1.0, health
    assert len(ended) == SLOW, f"{SLOW - len(ended)} slow clients still held"
    for name, answer, after in ended.values():
        assert after < READ_DEADLINE_S + SWEEP_S + 1.5, (name, after)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), (name, answer[:80])
    assert sum(answer.startswith(b"HTTP/1.1 408") for _, answer, _ in ended.values()) > SLOW // 2
    assert " ERROR " not in slow_server.log() and '"ERROR"' not in slow_server.log()


@pytest.mark.parametrize("first", [b"", b"GET /health HTTP/1.1\r\nHo", b"POST /v1/embeddings HTTP/1.1\r\n"
                                   b"Host: x\r\nContent-Length: 50\r\n\r\n{\"inp"])
def test_a_stalled_request_is_cut_after_the_read_timeout(slow_server, first):
    sock = _open(slow_server, first) if first else socket.create_connection(("127.0.0.1", slow_server.port))
    sock.settimeout(READ_TIMEOUT_S + SWEEP_S + 2)
    started = time.monotonic()
    answer = sock.recv(4096)
    took = time.monotonic() - started
    sock.close()
    assert READ_TIMEOUT_S - 0.2 < took < READ_TIMEOUT_S + SWEEP_S + 1, took
    # Nothing of a request sent: closed without a word; part of one: a 408.
    assert answer == b"" if not first else answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer


def _send_slowly(server: Server, parts: list[bytes], pause_s: float) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for part in parts:
            sock.sendall(part)
            time.sleep(pause_s)
        return _read_to_end(sock)


def _read_to_end(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_a_slow_but_steady_request_is_answered(slow_server):
    body = b'{"input": "a slow but steady client", "return_sparse": false, "return_colbert": false}'
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
            b"\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n" % len(body))
    answer = _send_slowly(slow_server, [head, b"\r\n", body[:20], body[20:60], body[60:]], READ_TIMEOUT_S * 0.6)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
    vector = json.loads(answer.partition(b"\r\n\r\n")[2])["data"][0]["dense_embedding"]
    reference = dense(requests.post(f"{slow_server.url}/v1/embeddings", headers=AUTH, timeout=30,
                                    json={"input": "a slow but steady client"}))
    assert vector == reference


def test_expect_100_continue_gets_its_continue_before_the_body(slow_server):
    body = b'{"input": "hello"}'
    head = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
            b"\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        assert b"HTTP/1.1 200 OK\r\n" in _read_to_end(sock)


def test_pipelined_and_kept_alive_requests_are_all_answered(slow_server):
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=10) as sock:
        sock.sendall(one * 3)
        time.sleep(0.5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = _read_to_end(sock)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 4, answer


def test_the_server_still_embeds(slow_server):
    assert len(embed(slow_server, {"input": "still here"})["data"]) == 1
