"""Start the real server (gunicorn + engine) as a subprocess on a free loopback port."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).parent / "gunicorn"
# The API token of the servers that tests and benchmarks start, and its header.
TOKEN = "testkit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def gunicorn_command() -> list[str]:
    """gunicorn beside this Python, or run as a module where it was installed without its
    script (``pip install --target``, as on the GPU machine: bench/gpu/check.sh)."""
    return [str(GUNICORN)] if GUNICORN.is_file() else [sys.executable, "-m", "gunicorn"]
_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    # A test run that is killed must not leave servers behind: the kernel sends
    # the server SIGTERM (a graceful stop) when the process that started it dies.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``shm_size`` (``"4m"``, ``"64m"``): run the server in a mount namespace of its own whose
    /dev/shm is a tmpfs of that size (root and ``unshare``, as in CI), the way a container
    without ``--shm-size`` runs it; ``shm_entries()`` lists that /dev/shm, and ``stop`` leaves
    what it held after the server exited in ``shm_left``."""

    def __init__(self, model_path: Path, log_path: Path, shm_size: str | None = None, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.shm_size = shm_size
        self._namespace: int | None = None  # a descriptor of the server's mount namespace, which keeps it
        self.shm_left: list[str] | None = None  # with shm_size: what its /dev/shm held after the server exited
        self.env = {
            **os.environ,
            "MODEL_PATH": str(model_path), "BIND": f"127.0.0.1:{self.port}", "DEVICE": "cpu",
            "DTYPE": "float32", "WEB_CONCURRENCY": "2", "LOG_FORMAT": "text", "API_TOKEN": TOKEN,
            # bge-m3 alone unless RERANKER_PATH names a cross-encoder: the default folder would be downloaded.
            "RERANKER_PATH": "none", **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 120.0) -> Server:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = [*gunicorn_command(), "-c", "gunicorn.conf.py", "embsvc.wsgi:app"]
        if self.shm_size:
            # unshare and sh exec in turn: gunicorn's master keeps this pid, which the probes rely on.
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       'mount -t tmpfs -o size="$0",mode=1777 tmpfs /dev/shm && exec "$@"', self.shm_size, *command]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_terminate_with_parent)
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self._hold_namespace()
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or too busy starting to answer within a second
            time.sleep(0.1)
        raise TimeoutError(f"server not healthy in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def auth(self) -> dict[str, str]:
        """The header of the server's (first) API token."""
        return {"Authorization": f"Bearer {self.env['API_TOKEN'].split(',')[0]}"}

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = requests.get(f"{self.url}/stats", headers=self.auth, timeout=30).json()
        return answer

    def tokens(self, body: dict[str, Any]) -> int:
        """The tokens an embedding request's ``body`` costs, from /tokenize (no model pass): a load
        generator then need not parse the answers."""
        asked = {key: body[key] for key in ("input", "max_length") if key in body}
        answer = requests.post(f"{self.url}/tokenize", json=asked, headers=self.auth, timeout=60)
        answer.raise_for_status()
        return int(answer.json()["usage"]["total_tokens"])

    def _hold_namespace(self) -> None:
        if self.shm_size and self._namespace is None:
            # Held open, the namespace and its /dev/shm outlive the server, to be looked at after exit.
            self._namespace = os.open(f"/proc/{self.process.pid}/ns/mnt", os.O_RDONLY)

    def shm_entries(self) -> list[str]:
        """What the server's /dev/shm holds (its own namespace's with ``shm_size``)."""
        if self._namespace is None:
            return sorted(os.listdir("/dev/shm"))
        listing = subprocess.run(["nsenter", f"--mount=/proc/{os.getpid()}/fd/{self._namespace}", "ls", "-A",
                                  "/dev/shm"], capture_output=True, text=True, check=True)
        return sorted(listing.stdout.split())

    def shm_path(self) -> Path:
        """The server's /dev/shm as seen from here, while its master runs."""
        return Path(f"/proc/{self.process.pid}/root/dev/shm") if self.shm_size else Path("/dev/shm")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        if self._namespace is not None:
            self.shm_left = self.shm_entries()
            os.close(self._namespace)  # the namespace and its /dev/shm go with the last reference
            self._namespace = None
        return self.process.returncode
