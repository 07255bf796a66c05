"""deploy/nginx/nginx.conf: nginx -t accepts it (as an ordinary user), its limits
match the server's, and render.py gives tests their own upstreams and port."""

from __future__ import annotations

import http.client
import os
import pwd
import re
import shutil
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from testkit import nginx as nginx_proxy
from testkit.loopback import serve

from .helpers import DEPLOY, api_default, load_render, run, tool

NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"


@pytest.fixture(scope="module")
def render() -> ModuleType:
    return load_render()


def nginx_t(conf: Path, *, as_user: tuple[int, int] | None = None) -> tuple[int, str]:
    prefix = conf.parent
    args = [tool("nginx"), "-t", "-q", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs" / "error.log")]
    if as_user is not None:
        uid, gid = as_user
        args = [tool("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *args]
    result = run(args)
    return result.returncode, result.stderr


def test_rendered_config_passes_nginx_t(tmp_path: Path, render: ModuleType) -> None:
    conf = render.write_config(tmp_path, upstreams=["127.0.0.1:18001", "127.0.0.1:18002"], listen="127.0.0.1:18080")
    code, stderr = nginx_t(conf)
    assert code == 0, f"nginx -t rejects the rendered deploy/nginx/nginx.conf:\n{stderr}"
    assert "[warn]" not in stderr and "[emerg]" not in stderr, stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="already runs as an ordinary user above")
def test_rendered_config_passes_nginx_t_as_an_ordinary_user(render: ModuleType) -> None:
    """CI runs as root; the end-to-end test must also work for a developer who is not."""
    nobody = pwd.getpwnam("nobody")
    # Not under tmp_path: pytest keeps its base folder private to root.
    prefix = Path(tempfile.mkdtemp(prefix="embsvc-nginx-"))
    try:
        conf = render.write_config(prefix, upstreams=["127.0.0.1:18001"], listen="127.0.0.1:18080")
        for path in [prefix, *prefix.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        code, stderr = nginx_t(conf, as_user=(nobody.pw_uid, nobody.pw_gid))
        assert code == 0, f"nginx -t fails for a user other than root:\n{stderr}"
    finally:
        shutil.rmtree(prefix)


def test_nginx_t_reports_a_broken_config(tmp_path: Path, render: ModuleType) -> None:
    """The check above can fail: an unknown directive makes nginx -t exit non-zero."""
    template = tmp_path / "broken.conf"
    template.write_text(NGINX_CONF.read_text(encoding="utf-8").replace("server_tokens off;", "server_tokenz off;"))
    conf = render.write_config(tmp_path / "p", upstreams=["127.0.0.1:1"], listen="127.0.0.1:18080", template=template)
    code, stderr = nginx_t(conf)
    assert code != 0 and "server_tokenz" in stderr


def test_render_changes_only_the_marked_blocks(render: ModuleType, tmp_path: Path) -> None:
    template = NGINX_CONF.read_text(encoding="utf-8")
    text = render.render(
        template,
        upstreams=["127.0.0.1:9001", "[::1]:9002", "unix:/tmp/e.sock"],
        listen="127.0.0.1:9000",
        prefix=tmp_path,
    )
    servers = re.findall(r"^\s*server (\S+) (.*);$", text, re.MULTILINE)
    assert [s[0] for s in servers] == ["127.0.0.1:9001", "[::1]:9002", "unix:/tmp/e.sock"]
    assert all(params == "max_fails=3 fail_timeout=5s" for _, params in servers), servers
    assert "resolve" not in " ".join(p for _, p in servers)
    assert "resolver 127.0.0.11" not in text
    assert re.search(r"^\s*listen 127\.0\.0\.1:9000;$", text, re.MULTILINE)
    assert f"pid {tmp_path.resolve()}/nginx.pid;" in text
    assert f"proxy_temp_path {tmp_path.resolve()}/tmp/proxy;" in text
    # Everything outside the markers is the production file's.
    unmarked = re.compile(r"# BEGIN (\S+).*?# END \1", re.DOTALL)
    assert unmarked.sub("", text) == unmarked.sub("", template)
    # Rendering again gives the same file (markers are kept).
    again = render.render(
        text, upstreams=["127.0.0.1:9001", "[::1]:9002", "unix:/tmp/e.sock"], listen="127.0.0.1:9000", prefix=tmp_path
    )
    assert again == text


def test_render_refuses_bad_input(render: ModuleType) -> None:
    template = NGINX_CONF.read_text(encoding="utf-8")
    with pytest.raises(ValueError):
        render.render(template, upstreams=[], listen="127.0.0.1:9000")
    with pytest.raises(ValueError):
        render.render(template, upstreams=["127.0.0.1:1; evil"], listen="127.0.0.1:9000")
    with pytest.raises(render.TemplateError):
        render.render(template.replace("# BEGIN listen", "# listen"), upstreams=["a:1"], listen="9000")


def test_render_command_line(tmp_path: Path) -> None:
    import sys

    result = run(
        [
            sys.executable,
            str(DEPLOY / "nginx" / "render.py"),
            "--prefix",
            str(tmp_path),
            "--listen",
            "127.0.0.1:18080",
            "--upstream",
            "127.0.0.1:18001",
            "--upstream",
            "127.0.0.1:18002",
        ]
    )
    assert result.returncode == 0, result.stderr
    conf = Path(result.stdout.strip())
    assert conf == tmp_path.resolve() / "nginx.conf" and "server 127.0.0.1:18002" in conf.read_text()
    assert nginx_t(conf)[0] == 0


def directive(name: str, text: str) -> str:
    values = re.findall(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE)
    assert len(values) == 1, f"{name}: expected one setting, found {values}"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, value
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match[2]]


def test_limits_match_the_server() -> None:
    text = NGINX_CONF.read_text(encoding="utf-8")
    # Body size: MAX_REQUEST_BYTES (8 MiB in docs/api.md).
    body = api_default("MAX_REQUEST_BYTES")
    mib = re.fullmatch(r"(\d+) MiB", body)
    assert mib, body
    assert directive("client_max_body_size", text) == f"{mib[1]}m"
    assert f"limit {mib[1]} MiB" in text, "the 413 message names the limit"
    # Read timeout: longer than REQUEST_TIMEOUT_S so that the server's own 504 gets through.
    timeout = float(api_default("REQUEST_TIMEOUT_S"))
    assert timeout < seconds(directive("proxy_read_timeout", text)) <= timeout + 30
    # Keep-alive to the upstream.
    assert directive("proxy_http_version", text.split("location = /metrics")[0]) == "1.1"
    assert re.search(r'proxy_set_header Connection ""', text)
    assert int(directive("keepalive", text)) > 0
    # Retries stop long before a request could have been answered.
    assert seconds(directive("proxy_next_upstream_timeout", text)) < timeout
    # nginx's own errors speak the service's JSON shape.
    for status in ("413", "503", "504"):
        body_match = re.search(rf"return {status} '(\{{.*\}})\\n';", text)
        assert body_match, status
        import json

        payload = json.loads(body_match[1])
        assert set(payload) == {"error", "detail"} and payload["error"]["message"] == payload["detail"]


# -- deliberate 503s: passed on, never counted against a replica ----------------------------------

DELIBERATE = ("http_503", "http_429", "http_502", "http_500", "http_504")


def test_retries_are_for_broken_connections_not_for_the_server_s_own_answers() -> None:
    """nginx counts each status listed in proxy_next_upstream as a failed attempt (max_fails): the
    server's deliberate 503s (full queue, restarting engine, full /dev/shm) must not be listed."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    retries = directive("proxy_next_upstream", text).split()
    assert {"error", "timeout", "non_idempotent"} <= set(retries), retries
    assert not set(DELIBERATE) & set(retries), retries
    assert re.search(r"server \S+ .*max_fails=\d+ fail_timeout=\d+s", text), "real failures still count"


class _Upstream(ThreadingHTTPServer):
    """A stand-in replica that answers every request with one status, and counts them."""

    daemon_threads = True

    def __init__(self, status: int) -> None:
        self.status, self.hits = status, 0
        super().__init__(("127.0.0.1", 0), _Answer)


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn speaks it to nginx
    server: _Upstream

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.hits += 1
        busy = self.server.status == 503
        body = b'{"detail": "queue full"}' if busy else b'{"ok": true}'
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if busy:
            self.send_header("Retry-After", "7")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_replica_answering_503_stays_in_the_rotation_and_its_answer_reaches_the_client() -> None:
    busy, fine = _Upstream(503), _Upstream(200)
    for upstream in (busy, fine):
        serve(upstream)
    try:
        addresses = [f"127.0.0.1:{u.server_address[1]}" for u in (busy, fine)]
        with nginx_proxy.running(addresses) as (port, _):
            answers = []
            for _ in range(30):  # well over max_fails=3 within fail_timeout=5s
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", "/v1/embeddings", body=b'{"input": "a"}',
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                answers.append((response.status, response.getheader("Retry-After"), response.read()))
                conn.close()
    finally:
        for upstream in (busy, fine):
            upstream.shutdown()
            upstream.server_close()
    refused = [a for a in answers if a[0] == 503]
    # The replica's own 503 (its body, its Retry-After), not nginx's, and not retried elsewhere.
    assert refused and all(a == (503, "7", b'{"detail": "queue full"}') for a in refused), answers
    assert busy.hits == len(refused) and fine.hits == len(answers) - len(refused)
    # Never marked down: it kept getting its share of the 30 (at most 3 if its 503s had counted).
    assert busy.hits >= 10, (busy.hits, fine.hits)


# -- TLS, per-client limits, /metrics, headers ------------------------------------------------------

SECURITY_HEADERS = ("add_header X-Content-Type-Options nosniff always;",
                    """add_header Content-Security-Policy "frame-ancestors 'none'" always;""")


def blocks_with_add_header(text: str) -> list[str]:
    """Each location that sets a header of its own (nginx then drops the inherited ones)."""
    locations = re.findall(r"^([ \t]*)location [^\n]*\{\n(.*?)^\1\}", text, re.MULTILINE | re.DOTALL)
    assert len(locations) >= 5, locations
    return [body for _, body in locations if "add_header" in body]


def test_every_block_with_its_own_headers_repeats_the_security_headers() -> None:
    """add_header in a location replaces every add_header of the levels above it."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    http_level = text.split("upstream embsvc", 1)[0]
    assert all(h in http_level for h in SECURITY_HEADERS), "set for every answer at the http level"
    own = blocks_with_add_header(text.split("upstream embsvc", 1)[1])
    assert own, "the named error locations set Retry-After and X-Request-ID"
    for body in own:
        assert all(h in body for h in SECURITY_HEADERS), body


def test_metrics_is_refused_by_prefix_without_an_address_list() -> None:
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert "location = /metrics" not in text, "an exact match lets /metrics/ and /metrics%2F through"
    block = re.search(r"location \^~ /metrics \{([^}]*)\}", text)
    assert block and block[1].split() == ["deny", "all;"], block


def test_production_listens_with_tls_and_redirects_port_80() -> None:
    text = NGINX_CONF.read_text(encoding="utf-8")
    assert re.search(r"^\s*listen 443 ssl;$", text, re.MULTILINE)
    assert "ssl_certificate /etc/nginx/tls/tls.crt;" in text
    redirect = re.search(r"# BEGIN http-redirect.*?# END http-redirect", text, re.DOTALL)
    assert redirect and "listen 80;" in redirect[0] and "return 308 https://$host$request_uri;" in redirect[0]
    assert "location = /nginx-health" in redirect[0], "the container's health check uses port 80"
    assert re.search(r"ssl_protocols TLSv1\.2 TLSv1\.3;", text)


def test_render_with_tls_limits_and_redirect(render: ModuleType, tmp_path: Path) -> None:
    template = NGINX_CONF.read_text(encoding="utf-8")
    plain = render.render(template, upstreams=["127.0.0.1:1"], listen="127.0.0.1:9000")
    assert "ssl_certificate" not in plain.replace("ssl_certificate_key", "") and "return 308" not in plain
    assert re.search(r"^\s*listen 127\.0\.0\.1:9000;$", plain, re.MULTILINE)
    assert render.template_limits(plain) == render.template_limits(template) == render.Limits(50, 100, 32)
    tls = render.Tls(tmp_path / "c.pem", tmp_path / "k.pem")
    text = render.render(template, upstreams=["127.0.0.1:1"], listen="127.0.0.1:9443", tls=tls,
                         http_listen="127.0.0.1:9080", limits=render.Limits(3, 0, 2))
    assert re.search(r"^\s*listen 127\.0\.0\.1:9443 ssl;$", text, re.MULTILINE)
    assert f"ssl_certificate {tmp_path}/c.pem;" in text and f"ssl_certificate_key {tmp_path}/k.pem;" in text
    assert re.search(r"^\s*listen 127\.0\.0\.1:9080;$", text, re.MULTILINE) and "return 308 https://" in text
    assert "rate=3r/s;" in text and "burst=0 nodelay;" in text and "limit_conn embsvc_conn 2;" in text
    assert render.template_limits(text) == render.Limits(3, 0, 2)
    with pytest.raises(ValueError):
        render.render(template, upstreams=["a:1"], listen="9000", http_listen="9080")  # a redirect needs TLS
    with pytest.raises(ValueError):
        render.render(template, upstreams=["a:1"], listen="9000", limits=render.Limits(0, 1, 1))
    with pytest.raises(ValueError):
        render.render(template, upstreams=["a:1"], listen="9000", tls=render.Tls(Path("/x; evil"), Path("/k")))


def test_limits_from_the_environment(render: ModuleType) -> None:
    base = render.Limits(50, 100, 32)
    assert render.limits_from_env({}, base) == base
    env = {"NGINX_RATE_LIMIT": "7", "NGINX_CONN_LIMIT": " 4 "}
    assert render.limits_from_env(env, base) == render.Limits(7, 100, 4)
    with pytest.raises(ValueError, match="NGINX_RATE_BURST"):
        render.limits_from_env({"NGINX_RATE_BURST": "lots"}, base)


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "tls.crt", folder / "tls.key"
    result = run([tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                  "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)])
    assert result.returncode == 0, result.stderr
    return cert, key


def test_the_command_line_renders_tls_and_limits_that_nginx_accepts(tmp_path: Path) -> None:
    import os
    import sys

    cert, key = self_signed(tmp_path)
    env = {**os.environ, "NGINX_RATE_LIMIT": "9", "NGINX_CONN_LIMIT": "5"}
    result = run([sys.executable, str(DEPLOY / "nginx" / "render.py"), "--prefix", str(tmp_path / "p"),
                  "--listen", "127.0.0.1:18443", "--http-listen", "127.0.0.1:18080", "--upstream", "127.0.0.1:18001",
                  "--tls-cert", str(cert), "--tls-key", str(key), "--burst", "4"], env=env)
    assert result.returncode == 0, result.stderr
    text = Path(result.stdout.strip()).read_text()
    assert "rate=9r/s;" in text and "burst=4 nodelay;" in text and "limit_conn embsvc_conn 5;" in text
    code, stderr = nginx_t(Path(result.stdout.strip()))
    assert code == 0 and "[warn]" not in stderr, stderr
    missing_key = run([sys.executable, str(DEPLOY / "nginx" / "render.py"), "--prefix", str(tmp_path / "q"),
                       "--listen", "9000", "--upstream", "a:1", "--tls-cert", str(cert)])
    assert missing_key.returncode == 2 and "--tls-key" in missing_key.stderr
