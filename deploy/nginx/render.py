"""Render deploy/nginx/nginx.conf for another set of upstreams, port and folder.

The production file targets the compose network (replicas ``embsvc-1`` and
``embsvc-2`` found through Docker's DNS, port 80, logs on stdout). A test, or a
host without Docker, needs the same proxy settings with its own upstream list,
listen address and a private folder for the pid, logs and temp files, so that
nginx runs as an ordinary user. Only the lines between the ``# BEGIN <name>``
and ``# END <name>`` markers of nginx.conf are rewritten; everything else
(timeouts, body size, keep-alive, retries, error pages) is kept as it is.

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
import re
import sys
from collections.abc import Sequence
from pathlib import Path

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
) -> str:
    """Return nginx.conf with these upstream servers and listen address.

    With ``prefix``, the pid file, both logs and the temp folders go under it
    (nothing outside it is written, so nginx runs as any user); without it,
    the production paths (stdout, stderr, nginx's defaults) stay.
    """
    if not upstreams:
        raise ValueError("at least one upstream server is needed")
    params = server_parameters(template)
    servers = [" ".join(["server", _check(u, "upstream"), *params]) + ";" for u in upstreams]
    text = _replace_block(template, "upstream-servers", servers)
    text = _replace_block(text, "listen", [f"listen {_check(listen, 'listen address')};"])
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
) -> Path:
    """Render into ``prefix/nginx.conf``, create its log and temp folders, return the path."""
    root = Path(prefix).resolve()
    for sub in ("logs", *(f"tmp/{s}" for s in _TEMP_DIRECTIVES.values())):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(
        render(template.read_text(encoding="utf-8"), upstreams=upstreams, listen=listen, prefix=root),
        encoding="utf-8",
    )
    return conf


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", type=Path, required=True, help="folder for nginx.conf, pid, logs, temp files")
    parser.add_argument("--listen", required=True, help="listen address, e.g. 127.0.0.1:8080")
    parser.add_argument(
        "--upstream", action="append", required=True, help="host:port of one replica (repeat the option)"
    )
    parser.add_argument("--template", type=Path, default=TEMPLATE, help="default: %(default)s")
    args = parser.parse_args(argv)
    conf = write_config(args.prefix, upstreams=args.upstream, listen=args.listen, template=args.template)
    root = conf.parent
    print(conf)
    print(
        f"start: nginx -p {root} -c {conf} -e {root}/logs/error.log -g 'daemon off;'",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
