"""Container health check: exit 0 when GET /health on this container answers 200.

The image has neither curl nor wget, so Docker's HEALTHCHECK (and compose's
healthcheck) run this with the image's Python. It follows BIND, so a changed
port or a unix socket does not break the check. Standard library only.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys

TIMEOUT_S = 4.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def connection(bind: str) -> http.client.HTTPConnection:
    """An HTTP connection to the first address of gunicorn's BIND setting."""
    bind = bind.split(",")[0].strip()
    if bind.startswith("unix:"):
        return _UnixConnection(bind[len("unix:") :], TIMEOUT_S)
    if bind.startswith("fd://"):
        raise ValueError("BIND=fd://... has no address to check")
    host, _, port = bind.rpartition(":") if ":" in bind else (bind, "", "8000")
    if not host or host in ("0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "::1"
    return http.client.HTTPConnection(host.strip("[]"), int(port or 8000), timeout=TIMEOUT_S)


def main() -> int:
    try:
        conn = connection(os.environ.get("BIND", "0.0.0.0:8000"))
        conn.request("GET", "/health")
        status = conn.getresponse().status
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(f"health check failed: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"health check: GET /health answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
