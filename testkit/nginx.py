"""Debian's nginx in front of local upstreams, with deploy/nginx/nginx.conf as production runs it
(rendered by deploy/nginx/render.py for these upstreams and a free port; nginx runs as an
ordinary user, "nobody" when the tests run as root)."""

from __future__ import annotations

import contextlib
import http.client
import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from testkit import scripts
from testkit.server import free_port

# A load generator is one client address to nginx: production's per-client limits would refuse
# most of its requests. The tests of the limits themselves pass their own.
LOAD_TEST_LIMITS = {"rate": 100000, "burst": 100000, "connections": 16384}


def render_module() -> ModuleType:
    return scripts.load("nginx/render.py")


def start(prefix: Path, upstreams: Sequence[str], *, limits: dict[str, int] | None = None,
          tls: tuple[Path, Path] | None = None,
          http_listen: str | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """nginx serving on a free loopback port; ``prefix`` must be a folder its user may enter.

    ``limits``: render.Limits' fields (default LOAD_TEST_LIMITS); ``tls``: certificate and key
    files, readable by nginx's user, to serve HTTPS on the port; ``http_listen``: with ``tls``, the
    address of the plain-HTTP server that redirects to it."""
    port = free_port()
    render = render_module()
    options: dict[str, Any] = {"limits": render.Limits(**(limits or LOAD_TEST_LIMITS))}
    if tls is not None:
        options["tls"] = render.Tls(*tls)
        options["http_listen"] = http_listen
    conf = render.write_config(prefix, upstreams=list(upstreams), listen=f"127.0.0.1:{port}", **options)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    command = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "logs" / "error.log"),
               "-g", "daemon off;"]
    if os.geteuid() == 0:  # as root nginx would switch its workers to "nobody": run all of it as that user
        nobody = pwd.getpwnam("nobody")
        for path in [prefix, *prefix.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        command = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", *command]
    process = subprocess.Popen(command, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=2,
                                                context=ssl._create_unverified_context())
                    if tls is not None else http.client.HTTPConnection("127.0.0.1", port, timeout=2))
            conn.request("GET", "/nginx-health")
            if conn.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"nginx did not start; see {prefix / 'logs' / 'error.log'}")


@contextlib.contextmanager
def running(upstreams: Sequence[str], **options: Any) -> Iterator[tuple[int, Path]]:
    """nginx for the length of a ``with``: its port and its prefix folder (logs/access.log, ...).

    ``options`` go to ``start``; a ``tls`` pair is copied into the prefix, where nginx may read it."""
    # Not under pytest's tmp_path, which is private to root: nginx runs as another user.
    prefix = Path(tempfile.mkdtemp(prefix="embsvc-nginx-"))
    os.chmod(prefix, 0o755)
    process = None
    try:
        if options.get("tls") is not None:
            copies = (prefix / "tls.crt", prefix / "tls.key")
            for source, copy in zip(options["tls"], copies, strict=True):
                shutil.copy(source, copy)
            options["tls"] = copies
        process, port = start(prefix, upstreams, **options)
        yield port, prefix
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)
