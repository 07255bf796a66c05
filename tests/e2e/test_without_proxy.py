"""What a caller gets from the server alone, with nothing in front: bounded work for one
small request, a client's malformed body answered as the client's fault, no token kept in
the access log, and nothing about the host for a caller without a token."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from embsvc.core.tokenizer import CHARS_PER_TOKEN
from tests.e2e.conftest import AUTH, TOKEN, dense, post

pytestmark = pytest.mark.slow

MAX_TOKENS = 8192  # the server's default
BOUND = CHARS_PER_TOKEN * MAX_TOKENS
HUGE = "word " * 1_600_000  # 8 MB: under MAX_REQUEST_BYTES, 1.6 M tokens


def test_tei_tokenize_of_a_huge_text_is_refused_at_once(server):
    started = time.monotonic()
    response = post(server, "/tokenize", {"inputs": HUGE}, timeout=60)
    assert time.monotonic() - started < 5
    assert response.status_code == 413 and response.json()["error_type"] == "Validation"
    assert f"more than /tokenize's limit of {BOUND}" in response.json()["error"]


def test_a_huge_text_is_embedded_as_its_first_characters_are(server):
    """Only the first CHARS_PER_TOKEN × MAX_TOKENS characters are tokenized: the same vector."""
    whole = post(server, "/v1/embeddings", {"input": HUGE, "return_sparse": False, "return_colbert": False},
                 timeout=60)
    assert whole.status_code == 200 and whole.json()["usage"]["prompt_tokens"] == MAX_TOKENS
    cut = post(server, "/v1/embeddings", {"input": HUGE[:BOUND], "return_sparse": False, "return_colbert": False})
    assert dense(whole) == dense(cut)
    refused = post(server, "/v1/embeddings", {"input": HUGE, "truncate": False}, timeout=60)
    assert refused.status_code == 400 and f"more than the limit of {BOUND}" in refused.json()["detail"]


def _exchange(server, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_malformed_chunk_is_a_400_logged_as_the_clients_fault(server):
    before = len(server.log())
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    answer = _exchange(server, head + b"2;\x00\r\n{}\r\n0\r\n\r\n")
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 400 Bad Request", answer[:300]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["type"] == "invalid_request_error" and "malformed" in body["detail"]
    time.sleep(0.5)
    lines = server.log()[before:].splitlines()
    malformed = [line for line in lines if "Malformed request body" in line]
    assert len(malformed) == 1 and " WARNING " in malformed[0], lines
    assert not [line for line in lines if " ERROR " in line or "Traceback" in line], lines


def test_a_token_in_the_query_never_reaches_the_access_log(server):
    secret = "query-secret-0123456789"
    response = requests.get(f"{server.url}/v1/models?api_key={secret}&token={secret}", timeout=10)
    assert response.status_code == 401
    time.sleep(0.5)
    log = server.log()
    assert secret not in log
    assert "/v1/models?api_key=***&token=***" in log


def test_health_tells_a_caller_without_a_token_nothing_of_the_host(server):
    assert requests.get(f"{server.url}/health", timeout=10).json() == {"status": "ok", "model": "BAAI/bge-m3"}
    detailed = requests.get(f"{server.url}/health/detailed", headers=AUTH, timeout=10).json()
    assert detailed["shared_memory"]["path"] == "/dev/shm" and detailed["engines"] == ["ready"]
