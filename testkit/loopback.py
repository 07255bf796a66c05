"""HTTP stand-ins on loopback for tests: each served from a daemon thread."""

from __future__ import annotations

import socketserver
import threading


def serve(server: socketserver.BaseServer) -> threading.Thread:
    """Serve ``server`` from a daemon thread; its ``shutdown`` then returns within 10 ms
    (``serve_forever`` looks for it at each poll, every 0.5 s by default: every test paid that
    at its end)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    return thread
