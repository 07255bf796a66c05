"""deploy/nginx/nginx.conf as an attacker meets it: real nginx (testkit/nginx.py) in front of the
real server on the tiny model. /metrics is not served under any spelling, HTTPS works with a
certificate from a mounted file and port 80 only redirects to it, each client gets 429 past its
request rate or its requests in progress and nothing below them, and every answer carries
nosniff and frame-ancestors without breaking the /docs page."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from selenium.webdriver.remote.webdriver import WebDriver

from testkit import nginx as nginx_proxy
from testkit.server import Server, free_port
from tests.deploy.helpers import tool
from tests.e2e.conftest import AUTH, TOKEN
from tests.e2e.swagger_page import authorize, documented_operations, listed_operations, try_embeddings, wait_for

pytestmark = pytest.mark.slow

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "frame-ancestors 'none'"}
# Spellings of /metrics an attacker tries. Most reach the server's /metrics route when nginx passes
# them on (the server drops a trailing slash and its WSGI path is percent-decoded); the server's
# routes are case-sensitive, and nginx refuses a path above the root.
METRICS_SPELLINGS = ["/metrics", "/metrics/", "/metrics%2F", "/metrics%2f", "//metrics", "/./metrics",
                     "/%6Detrics", "/v1/../metrics", "/metrics?format=text", "/metrics/.", "/%2Fmetrics",
                     "/Metrics", "/../metrics"]


@pytest.fixture(scope="module")
def proxied(server: Server) -> Iterator[str]:
    """Plain HTTP through nginx, with the load-test limits (many requests from one address)."""
    with nginx_proxy.running([f"127.0.0.1:{server.port}"]) as (port, _):
        yield f"http://127.0.0.1:{port}"


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET with the request target exactly as written (requests would normalise it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- /metrics ------------------------------------------------------------------------------------

def test_the_server_itself_answers_the_metrics_spellings(server: Server) -> None:
    """What nginx must stop: without it, the other spellings reach the metrics too."""
    for target in ("/metrics", "/metrics/", "/metrics%2F"):
        status, body = raw_get(server.port, target)
        assert status == 200 and b"# TYPE" in body, (target, status, body[:200])


@pytest.mark.parametrize("target", METRICS_SPELLINGS)
def test_no_spelling_of_metrics_gets_through_nginx(proxied: str, target: str) -> None:
    status, body = raw_get(port_of(proxied), target)
    assert status in (400, 403, 404), (target, status, body[:200])
    assert b"# TYPE" not in body and b"# HELP" not in body, (target, body[:200])
    if status == 403:
        assert json.loads(body)["error"]["type"] == "permission_error"


def test_the_rest_of_the_api_still_passes(proxied: str) -> None:
    assert requests.get(f"{proxied}/health", timeout=10).status_code == 200
    answer = requests.post(f"{proxied}/v1/embeddings", json={"input": "through nginx"}, headers=AUTH, timeout=60)
    assert answer.status_code == 200 and answer.json()["data"], answer.text


# -- headers and /docs ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/health", "/docs", "/openapi.json", "/metrics", "/v1/models"])
def test_every_answer_carries_the_security_headers(proxied: str, path: str) -> None:
    """Also nginx's own 403 and the server's 401 (no token)."""
    response = requests.get(f"{proxied}{path}", timeout=10)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (path, response.status_code, dict(response.headers))


def test_the_docs_page_works_through_nginx(server: Server, proxied: str, browser: WebDriver) -> None:
    """nosniff refuses a script or style sheet served with another type: the page must still run."""
    browser.get(f"{proxied}/docs")
    wait_for(browser, ".opblock")
    assert listed_operations(browser) == documented_operations(server.url)
    authorize(browser, TOKEN)
    status, shown = try_embeddings(browser, {"input": "from the page, through nginx"})
    assert status.startswith("200"), shown
    assert json.loads(shown)["data"]


# -- TLS -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, as an operator's secret would hold one."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run([tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_with_the_mounted_certificate(server: Server, certificate: tuple[Path, Path]) -> None:
    cert, _ = certificate
    with nginx_proxy.running([f"127.0.0.1:{server.port}"], tls=certificate) as (port, _):
        url = f"https://127.0.0.1:{port}"
        answer = requests.post(f"{url}/v1/embeddings", json={"input": "over TLS"}, headers=AUTH, timeout=60,
                               verify=str(cert))
        assert answer.status_code == 200 and answer.json()["data"], answer.text
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        # The client checks the certificate: without trusting it, no request (and no token) is sent.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{url}/health", timeout=10)
        # A plain-HTTP request to the TLS port is refused, not served.
        plain = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert plain.status_code == 400


def test_port_80_redirects_to_https_and_answers_its_health_check(server: Server,
                                                               certificate: tuple[Path, Path]) -> None:
    http_port = free_port()
    with nginx_proxy.running([f"127.0.0.1:{server.port}"], tls=certificate, http_listen=f"127.0.0.1:{http_port}"):
        moved = requests.post(f"http://127.0.0.1:{http_port}/v1/embeddings?x=1", json={"input": "a"},
                              headers=AUTH, timeout=10, allow_redirects=False)
        assert moved.status_code == 308, moved.text
        assert moved.headers["Location"] == "https://127.0.0.1/v1/embeddings?x=1"
        assert requests.get(f"http://127.0.0.1:{http_port}/nginx-health", timeout=10).status_code == 200


# -- per-client limits ---------------------------------------------------------------------------

def test_past_the_request_rate_429_and_below_it_nothing_is_refused(server: Server) -> None:
    with nginx_proxy.running([f"127.0.0.1:{server.port}"], limits={"rate": 2, "burst": 4, "connections": 100}) \
            as (port, _):
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        # 15 at once, from 15 connections: nginx serves the first plus the burst of 4 (one more if
        # the bucket drained a request's worth, 0.5 s, while they arrived) and refuses the rest
        # at once. Sent one after another, each served one's time on a loaded machine would drain
        # the bucket and blur the count.
        start = threading.Barrier(15)

        def post(_: int) -> requests.Response:
            start.wait(10)
            return requests.post(url, json={"input": "a"}, headers=AUTH, timeout=60)

        with ThreadPoolExecutor(15) as pool:
            statuses = list(pool.map(post, range(15)))
        codes = sorted(r.status_code for r in statuses)
        assert set(codes) == {200, 429} and 5 <= codes.count(200) <= 6, codes
        refused = next(r for r in statuses if r.status_code == 429)
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert refused.headers["X-Content-Type-Options"] == "nosniff"

        with requests.Session() as session:
            time.sleep(3)  # the bucket drains at 2 a second
            # Below the rate (one every 0.6 s, 1.67 a second): every request is served.
            steady = []
            for _ in range(8):
                steady.append(session.post(url, json={"input": "b"}, headers=AUTH, timeout=60).status_code)
                time.sleep(0.6)
            assert steady == [200] * 8, steady


def hold_a_request(port: int) -> socket.socket:
    """A request whose body never comes: nginx counts it in progress while it waits for the body.

    With two nginx workers, a request just served may still hold its slot in the other worker
    for a moment; a hold sent then is refused at once, so a refused one is sent again."""
    deadline = time.monotonic() + 10
    while True:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n")
        sock.settimeout(0.3)
        try:
            answer = sock.recv(1024)
        except TimeoutError:  # no answer: nginx waits for the body
            sock.settimeout(10)
            return sock
        sock.close()
        assert answer.startswith(b"HTTP/1.1 429") and time.monotonic() < deadline, answer


def connections_to(port: int) -> str:
    """nginx's side of the connections to ``port`` (what a failure shows)."""
    return subprocess.run(["ss", "-tn", "state", "all", f"sport = :{port}"], capture_output=True, text=True,
                          check=False).stdout


def refused_within(url: str, seconds: float) -> requests.Response | None:
    """The first 429 for a request sent every 0.25 s (None: none within ``seconds``); served ones
    meanwhile only mean nginx has not counted a held request yet."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = requests.post(url, json={"input": "a"}, headers=AUTH, timeout=60)
        if answer.status_code == 429:
            return answer
        assert answer.status_code == 200, answer.text
        time.sleep(0.25)
    return None


def test_past_the_requests_in_progress_429_and_below_it_nothing_is_refused(server: Server) -> None:
    with nginx_proxy.running([f"127.0.0.1:{server.port}"], limits={"rate": 1000, "burst": 1000, "connections": 3}) \
            as (port, prefix):
        url = f"http://127.0.0.1:{port}/v1/embeddings"
        held = [hold_a_request(port) for _ in range(2)]
        try:
            time.sleep(0.5)  # nginx has read their headers
            # Two held and one more: at the limit of 3, served.
            assert requests.post(url, json={"input": "a"}, headers=AUTH, timeout=60).status_code == 200
            held.append(hold_a_request(port))
            over = refused_within(url, 5.0)  # once nginx has read the third one's headers
            assert over is not None, (connections_to(port), (prefix / "logs" / "error.log").read_text())
            assert over.json()["error"]["type"] == "rate_limit_error", over.text
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.5)  # nginx has seen them go
        assert [requests.post(url, json={"input": "a"}, headers=AUTH, timeout=60).status_code
                for _ in range(5)] == [200] * 5
