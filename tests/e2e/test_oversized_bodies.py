"""A body over MAX_REQUEST_BYTES is answered 413 the way nginx does it: the rest of the body is read
and dropped first, so that every common client reads the 413, also one that writes its whole
body before it reads (``http.client``, which got a broken pipe before); a body far over the
bound (4 × MAX_REQUEST_BYTES) is cut without being read."""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import requests

from testkit import procs
from tests.e2e.conftest import AUTH, serving

LIMIT = 4 << 20
OVER = 3 * LIMIT  # within the drain bound of 4 × LIMIT
HEADERS = {**AUTH, "Content-Type": "application/json"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    with serving(tiny_model, tmp_path_factory.mktemp("oversized"), MAX_REQUEST_BYTES=str(LIMIT)) as server:
        yield server


def big_body(size: int = OVER) -> bytes:
    return b'{"input": "' + b"a" * (size - 14) + b'"}'


def assert_413(status: int, text: str | bytes) -> None:
    assert status == 413, (status, text[:200])
    assert f"exceeds the limit of {LIMIT} bytes" in (text if isinstance(text, str) else text.decode())


def test_http_client_reads_the_413_and_keeps_its_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/embeddings", body=big_body(), headers=HEADERS)
    response = conn.getresponse()
    assert_413(response.status, response.read())
    # The body was read to its end: the same connection serves the next request.
    conn.request("POST", "/v1/embeddings", body=b'{"input": "next"}', headers=HEADERS)
    assert conn.getresponse().status == 200
    conn.close()


def test_http_client_sending_chunks_reads_the_413(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = big_body()
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    conn.request("POST", "/v1/embeddings", body=chunks, headers=HEADERS, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and b"exceeds the limit" in response.read()
    conn.close()


def test_requests_reads_the_413(server):
    response = requests.post(f"{server.url}/v1/embeddings", data=big_body(), headers=HEADERS, timeout=60)
    assert_413(response.status_code, response.text)


def test_httpx_reads_the_413(server):
    response = httpx.post(f"{server.url}/v1/embeddings", content=big_body(), headers=HEADERS, timeout=60)
    assert_413(response.status_code, response.text)


def test_curl_reads_the_413(server, tmp_path: Path):
    (tmp_path / "body.json").write_bytes(big_body())
    # curl asks "Expect: 100-continue" for a body this large; gunicorn says continue.
    result = subprocess.run(
        ["curl", "-sS", "-o", str(tmp_path / "answer"), "-w", "%{http_code}",
         "-H", f"Authorization: {AUTH['Authorization']}", "-H", "Content-Type: application/json",
         "--data-binary", f"@{tmp_path / 'body.json'}",
         f"{server.url}/v1/embeddings"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert_413(int(result.stdout), (tmp_path / "answer").read_text())


def test_a_refusal_before_the_body_is_read_drains_it_too(server):
    """Authentication refuses before any body is read: the client reads the 401 all the same."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/embeddings", body=big_body(2 * LIMIT),
                 headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 401 and b"authentication_error" in response.read()
    conn.close()


def test_a_body_far_over_the_bound_is_cut_unread(server):
    """Announced at 64 × the limit: the 413 comes after a few MiB, the connection closes, and the
    server has read only what the kernel buffered: it never took the whole body in."""
    announced = 64 * LIMIT
    workers = procs.worker_pids(server)
    rss = {pid: procs.rss_mb(pid) for pid in workers}
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {announced}\r\n\r\n").encode()
        sock.sendall(head)
        sent, reply, started = 0, b"", time.monotonic()
        sock.setblocking(False)
        while time.monotonic() - started < 20:
            try:
                sent += sock.send(b"a" * 65536)
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            reply += data
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert sent < announced // 4, f"sent {sent} of {announced} bytes before the server closed"
    assert all(procs.rss_mb(pid) < rss[pid] + 32 for pid in workers), (rss, [procs.rss_mb(p) for p in workers])
