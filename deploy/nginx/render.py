"""Render deploy/nginx/nginx.conf for another set of upstreams, port and folder.

The production file targets the compose network (replicas ``embsvc-1`` and
``embsvc-2`` found through Docker's DNS, HTTPS on 443 with the certificate in
/etc/nginx/tls, port 80 redirecting to it, logs on stdout). A test, or a host
without Docker, needs the same proxy settings with its own upstream list,
listen address and a private folder for the pid, logs and temp files, so that
nginx runs as an ordinary user. Only the lines between the ``# BEGIN <name>``
and ``# END <name>`` markers of nginx.conf are rewritten; everything else
(timeouts, body size, keep-alive, retries, error pages, headers) is kept as it is.

Without ``tls`` the rendered server speaks plain HTTP on ``listen`` (and the
port-80 redirect is dropped); with it, HTTPS with those files, and
``http_listen`` adds the redirect server on another address. The per-client
limits are the template's unless given (``Limits``, or on the command line
``--rate``/``--burst``/``--connections``, whose defaults come from
NGINX_RATE_LIMIT, NGINX_RATE_BURST and NGINX_CONN_LIMIT).

As a module (a test loads it by path, it is not part of a package)::

    conf = write_config(tmp_path, upstreams=["127.0.0.1:8001", "127.0.0.1:8002"],
                        listen="127.0.0.1:8080")
    subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf),
                    "-e", str(tmp_path / "logs" / "error.log")], check=True)
    # serve: the same command with -g "daemon off;" instead of -t

From the shell::

    python deploy/nginx/render.py --prefix /tmp/ngx --listen 127.0.0.1:8080 \\
        --upstream 127.0.0.1:8001 --upstream 127.0.0.1:8002
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

TEMPLATE = Path(__file__).with_name("nginx.conf")

# Folders nginx writes to at run time; each one is created under the prefix.
_TEMP_DIRECTIVES = {
    "client_body_temp_path": "body",
    "proxy_temp_path": "proxy",
    "fastcgi_temp_path": "fastcgi",
    "uwsgi_temp_path": "uwsgi",
    "scgi_temp_path": "scgi",
}
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:\[\]/-]+$")


class TemplateError(ValueError):
    """nginx.conf lacks a marker block that the renderer needs."""


# NamedTuples, not dataclasses: tests load this file by path, outside sys.modules.
class Limits(NamedTuple):
    """Per-client limits: requests per second, how many above it are served at once, requests in progress."""

    rate: int
    burst: int
    connections: int

    def check(self) -> Limits:
        if min(self.rate, self.connections) < 1 or self.burst < 0:
            raise ValueError(f"limits must be positive (burst may be 0): {self}")
        return self

    def zone_lines(self) -> list[str]:
        return [
            f"limit_req_zone $binary_remote_addr zone=embsvc_rate:10m rate={self.rate}r/s;",
            "limit_conn_zone $binary_remote_addr zone=embsvc_conn:10m;",
        ]

    def server_lines(self) -> list[str]:
        return [
            f"limit_req zone=embsvc_rate burst={self.burst} nodelay;",
            f"limit_conn embsvc_conn {self.connections};",
        ]


# Environment variables that override the template's limits on the command line.
LIMIT_ENV = {"rate": "NGINX_RATE_LIMIT", "burst": "NGINX_RATE_BURST", "connections": "NGINX_CONN_LIMIT"}


def template_limits(text: str) -> Limits:
    """The limits the template sets (its limit-zones and client-limits blocks)."""
    zones = " ".join(_block_lines(text, "limit-zones"))
    server = " ".join(_block_lines(text, "client-limits"))
    rate = re.search(r"rate=(\d+)r/s", zones)
    burst = re.search(r"burst=(\d+)", server)
    conns = re.search(r"limit_conn embsvc_conn (\d+);", server)
    if rate is None or burst is None or conns is None:
        raise TemplateError("the limit-zones/client-limits blocks of nginx.conf lack a rate, burst or limit_conn")
    return Limits(int(rate[1]), int(burst[1]), int(conns[1])).check()


def limits_from_env(env: Mapping[str, str], default: Limits) -> Limits:
    """``default`` with each value that NGINX_RATE_LIMIT, NGINX_RATE_BURST or NGINX_CONN_LIMIT sets."""
    values = {field: getattr(default, field) for field in LIMIT_ENV}
    for field, name in LIMIT_ENV.items():
        raw = env.get(name, "").strip()
        if raw:
            if not raw.isdigit():
                raise ValueError(f"{name}={raw!r}: a whole number")
            values[field] = int(raw)
    return Limits(**values).check()


class Tls(NamedTuple):
    """The certificate chain and private key files nginx reads (PEM)."""

    certificate: Path
    key: Path

    def lines(self) -> list[str]:
        cert = _check(str(self.certificate), "certificate path")
        key = _check(str(self.key), "key path")
        return [f"ssl_certificate {cert};", f"ssl_certificate_key {key};"]


def _redirect_server(http_listen: str) -> list[str]:
    """The plain-HTTP server: its own health answer, a redirect to HTTPS for the rest."""
    return [
        "server {",
        f"    listen {_check(http_listen, 'listen address')};",
        "    server_name _;",
        "    location = /nginx-health {",
        "        access_log off;",
        "        return 200 '{\"status\": \"ok\"}\\n';",
        "    }",
        "    location / {",
        "        return 308 https://$host$request_uri;",
        "    }",
        "}",
    ]


def _replace_block(text: str, name: str, lines: Sequence[str]) -> str:
    """Replace the lines between ``# BEGIN name`` and ``# END name``.

    The markers stay, so the result can be rendered again; the new lines take
    the indentation of the BEGIN marker.
    """
    pattern = re.compile(
        rf"^(?P<indent>[ \t]*)# BEGIN {re.escape(name)}\b[^\n]*\n"
        rf"(?P<body>.*?)"
        rf"^[ \t]*# END {re.escape(name)}\b[^\n]*$",
        re.MULTILINE | re.DOTALL,
    )
    match = pattern.search(text)
    if match is None:
        raise TemplateError(f"nginx.conf has no '# BEGIN {name}' ... '# END {name}' block")
    indent = match.group("indent")
    head = text[match.start() : match.start("body")]
    tail = text[match.end("body") : match.end()]
    body = "".join(f"{indent}{line}\n" for line in lines)
    return text[: match.start()] + head + body + tail + text[match.end() :]


def _block_lines(text: str, name: str) -> list[str]:
    pattern = re.compile(
        rf"^[ \t]*# BEGIN {re.escape(name)}\b[^\n]*\n(?P<body>.*?)^[ \t]*# END {re.escape(name)}\b",
        re.MULTILINE | re.DOTALL,
    )
    match = pattern.search(text)
    if match is None:
        raise TemplateError(f"nginx.conf has no '# BEGIN {name}' ... '# END {name}' block")
    return [line.strip() for line in match.group("body").splitlines() if line.strip()]


def server_parameters(text: str) -> list[str]:
    """The parameters of the template's first upstream server (``max_fails=3`` ...).

    ``resolve`` is dropped: it needs a resolver and names, the rendered
    config gets addresses.
    """
    for line in _block_lines(text, "upstream-servers"):
        words = line.rstrip(";").split()
        if words and words[0] == "server":
            return [w for w in words[2:] if w != "resolve"]
    raise TemplateError("the upstream-servers block of nginx.conf has no server line")


def _check(value: str, what: str) -> str:
    if not _SAFE_VALUE.match(value):
        raise ValueError(f"{what} {value!r}: use host:port, [v6]:port, port or unix:/path")
    return value


def render(
    template: str,
    *,
    upstreams: Sequence[str],
    listen: str,
    prefix: Path | None = None,
    tls: Tls | None = None,
    http_listen: str | None = None,
    limits: Limits | None = None,
) -> str:
    """Return nginx.conf with these upstream servers and listen address.

    With ``prefix``, the pid file, both logs and the temp folders go under it
    (nothing outside it is written, so nginx runs as any user); without it,
    the production paths (stdout, stderr, nginx's defaults) stay. ``tls``
    makes ``listen`` HTTPS; ``http_listen`` (with ``tls`` only) adds the
    plain-HTTP server that redirects to it.
    """
    if not upstreams:
        raise ValueError("at least one upstream server is needed")
    if http_listen is not None and tls is None:
        raise ValueError("http_listen is the redirect to HTTPS: it needs tls")
    params = server_parameters(template)
    servers = [" ".join(["server", _check(u, "upstream"), *params]) + ";" for u in upstreams]
    text = _replace_block(template, "upstream-servers", servers)
    ssl = " ssl" if tls is not None else ""
    text = _replace_block(text, "listen", [f"listen {_check(listen, 'listen address')}{ssl};"])
    text = _replace_block(text, "tls", tls.lines() if tls is not None else [])
    text = _replace_block(text, "http-redirect", _redirect_server(http_listen) if http_listen is not None else [])
    if limits is not None:
        text = _replace_block(text, "limit-zones", limits.check().zone_lines())
        text = _replace_block(text, "client-limits", limits.server_lines())
    # Addresses need no resolver; 127.0.0.11 only exists in a Docker network.
    text = _replace_block(text, "resolver", [])
    if prefix is not None:
        root = Path(prefix).resolve()
        _check(str(root), "prefix")
        text = _replace_block(
            text,
            "main-paths",
            [f"pid {root}/nginx.pid;", f"error_log {root}/logs/error.log warn;"],
        )
        text = _replace_block(
            text,
            "http-paths",
            [f"access_log {root}/logs/access.log embsvc;"]
            + [f"{d} {root}/tmp/{sub};" for d, sub in _TEMP_DIRECTIVES.items()],
        )
    return text


def write_config(
    prefix: Path,
    *,
    upstreams: Sequence[str],
    listen: str,
    template: Path = TEMPLATE,
    tls: Tls | None = None,
    http_listen: str | None = None,
    limits: Limits | None = None,
) -> Path:
    """Render into ``prefix/nginx.conf``, create its log and temp folders, return the path."""
    root = Path(prefix).resolve()
    for sub in ("logs", *(f"tmp/{s}" for s in _TEMP_DIRECTIVES.values())):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    text = render(
        template.read_text(encoding="utf-8"),
        upstreams=upstreams,
        listen=listen,
        prefix=root,
        tls=tls,
        http_listen=http_listen,
        limits=limits,
    )
    conf.write_text(text, encoding="utf-8")
    return conf


def _limits_argument(args: argparse.Namespace, template: Path) -> Limits | None:
    """The limits the options and environment ask for; None keeps the template's."""
    given = {field: getattr(args, field) for field in LIMIT_ENV if getattr(args, field) is not None}
    if not given and not any(os.environ.get(name, "").strip() for name in LIMIT_ENV.values()):
        return None
    base = limits_from_env(os.environ, template_limits(template.read_text(encoding="utf-8")))
    return Limits(**{field: given.get(field, getattr(base, field)) for field in LIMIT_ENV}).check()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", type=Path, required=True, help="folder for nginx.conf, pid, logs, temp files")
    parser.add_argument("--listen", required=True, help="listen address, e.g. 127.0.0.1:8080")
    parser.add_argument(
        "--upstream", action="append", required=True, help="host:port of one replica (repeat the option)"
    )
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="default: %(default)s")
    parser.add_argument("--tls-cert", type=Path, help="certificate chain (PEM): listen speaks HTTPS")
    parser.add_argument("--tls-key", type=Path, help="private key (PEM) of --tls-cert")
    parser.add_argument("--http-listen", help="with --tls-cert: a plain-HTTP address that redirects to HTTPS")
    for field, name in LIMIT_ENV.items():
        parser.add_argument(f"--{field}", type=int, help=f"per-client limit (default: ${name}, else the template's)")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = Tls(args.tls_cert.resolve(), args.tls_key.resolve()) if args.tls_cert is not None else None
    try:
        conf = write_config(
            args.prefix,
            upstreams=args.upstream,
            listen=args.listen,
            template=args.template,
            tls=tls,
            http_listen=args.http_listen,
            limits=_limits_argument(args, args.template),
        )
    except ValueError as exc:
        parser.error(str(exc))
    root = conf.parent
    print(conf)
    print(
        f"start: nginx -p {root} -c {conf} -e {root}/logs/error.log -g 'daemon off;'",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
