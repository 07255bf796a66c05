"""testkit/httpload.py, the benchmarks' load generator, against a small local HTTP/1.1 server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testkit import httpload
from testkit.loopback import serve


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/slow":
            time.sleep(0.3)
        status = 503 if self.path == "/busy" else 200
        answer = b"x" * (1 << 20) if self.path == "/big" else b'{"n": %d}' % len(body)
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        if self.path == "/close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    serve(server)
    yield server.server_address[1]
    server.shutdown()


def requests(path: str, body: bytes = b"{}", weight: int = 3) -> list[httpload.Request]:
    return [httpload.Request(httpload.post(path, body, {"Authorization": "Bearer t"}), weight)]


def test_many_connections_from_several_processes(port):
    result = httpload.run("127.0.0.1", port, requests("/ok"), connections=6, processes=2, seconds=0.6, warmup_s=0.1)
    figures = result.figures()
    assert figures["requests"] > 20 and figures["errors"] == 0
    assert result.weight == 3 * figures["requests"]
    assert figures["weight_per_s"] == pytest.approx(3 * figures["requests_per_s"], rel=0.01)
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert set(result.statuses) == {200}


def test_error_statuses_are_counted_not_timed(port):
    result = httpload.run("127.0.0.1", port, requests("/busy"), connections=2, processes=1, seconds=0.3)
    assert result.figures()["requests"] == 0 and result.statuses[503] > 0 and result.weight == 0


def test_large_bodies_both_ways(port):
    body = b'{"input": "%s"}' % (b"y" * 200_000)
    result = httpload.run("127.0.0.1", port, requests("/big", body), connections=2, processes=1, seconds=0.4)
    assert result.figures()["requests"] > 0 and result.figures()["errors"] == 0
    assert result.response_bytes > (1 << 20) * result.figures()["requests"]


def test_a_connection_the_server_closes_is_replaced(port):
    result = httpload.run("127.0.0.1", port, requests("/close"), connections=2, processes=1, seconds=0.4)
    assert result.figures()["requests"] > 2 and result.figures()["errors"] == 0


def test_request_bytes_and_response_heads():
    data = httpload.post("/v1/embeddings", b'{"a": 1}', {"Authorization": "Bearer t"})
    assert data.startswith(b"POST /v1/embeddings HTTP/1.1\r\n")
    assert b"Content-Length: 8\r\n" in data and data.endswith(b"\r\n\r\n{\"a\": 1}")
    assert httpload._response_size(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")) == (-1, False)
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: close\r\n\r\nab"
    assert httpload._response_size(bytearray(head)) == (len(head) - 2 + 5, True)
    assert httpload.percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_once_sends_each_request_once_and_waits_for_every_answer(port):
    result = httpload.run("127.0.0.1", port, requests("/slow") * 5, connections=2, processes=1, once=True)
    assert result.figures()["requests"] == 5 and result.weight == 15
    assert result.seconds >= 0.9  # three rounds of 0.3 s on two connections


def test_drain_counts_the_answers_that_come_after_the_window(port):
    plain = httpload.run("127.0.0.1", port, requests("/slow"), connections=2, processes=1, seconds=0.1)
    drained = httpload.run("127.0.0.1", port, requests("/slow"), connections=2, processes=1, seconds=0.1,
                           drain=True)
    assert plain.figures()["requests"] == 0
    assert drained.figures()["requests"] == 2 and drained.seconds >= 0.3


def test_a_paced_connection_waits_between_its_requests(port):
    result = httpload.run("127.0.0.1", port, requests("/ok"), connections=1, processes=1, seconds=0.7, pace_s=0.2)
    assert 2 <= result.figures()["requests"] <= 4  # at 0, 0.2, 0.4 and 0.6 s; unpaced, hundreds


def test_a_load_that_never_ends_is_refused():
    with pytest.raises(ValueError, match="seconds"):
        httpload.run("127.0.0.1", 1, requests("/ok"), connections=1, processes=1)


def test_figures_name_the_weight(port):
    result = httpload.run("127.0.0.1", port, requests("/ok"), connections=1, processes=1, seconds=0.2)
    assert "tokens_per_s" in result.figures("tokens") and "weight_per_s" not in result.figures("tokens")
