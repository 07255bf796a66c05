"""Looking at a running server from outside: its processes, shared memory and queue.

The server runs in its own session (``Server`` starts it with
``start_new_session``), so every process it ever started — web workers, the
engine, multiprocessing's resource tracker — carries the master's pid as its
session id, also after the master is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests

from gpu_pool.wire.segment_pool import POOLED_BYTES, WORKER_KEEPS
from testkit.server import Server

SHM = Path("/dev/shm")
FAULTS = Path(__file__).resolve().parent / "engine_faults"
T = TypeVar("T")
_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    session: int
    state: str  # R, S, D, T (stopped), Z (zombie), ...
    cmdline: str


def cpu_us(pid: int) -> float:
    """The CPU time ``pid`` has used so far (utime + stime), in µs; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0  # gone between listing and reading
    return (int(fields[11]) + int(fields[12])) * _TICK_US  # utime, stime (fields 14 and 15)


def switches(pid: int) -> int:
    """The context switches of every thread of ``pid`` so far (each a sleep or a preemption)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            total += sum(int(line.split()[1]) for line in status.read_text().splitlines()
                         if line.endswith("ctxt_switches", 0, line.find(":")))
    return total


def niceness(pid: int) -> set[int]:
    """The niceness of each thread of ``pid`` (Linux keeps one per thread)."""
    values = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            values.add(int(stat.read_text().rsplit(")", 1)[1].split()[16]))  # field 19
    return values


def proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return Proc(pid, int(fields[1]), int(fields[3]), fields[0], cmdline.strip())


def all_procs() -> list[Proc]:
    found = (proc(int(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return [p for p in found if p is not None]


def session(server: Server) -> list[Proc]:
    """Every process of the server, the master included, dead-but-unreaped ones too."""
    return [p for p in all_procs() if p.session == server.process.pid]


def children(pid: int) -> list[Proc]:
    return [p for p in all_procs() if p.ppid == pid]


def engine_pids(server: Server) -> list[int]:
    return [p.pid for p in children(server.process.pid) if "spawn_main" in p.cmdline and p.state != "Z"]


def engine_pid(server: Server) -> int:
    engines = engine_pids(server)
    assert len(engines) == 1, f"expected one engine process, found {engines}"
    return engines[0]


def worker_pids(server: Server) -> set[int]:
    return {p.pid for p in children(server.process.pid)
            if "gunicorn" in p.cmdline and p.state != "Z"}


def maps_torch(pid: int) -> bool:
    """Whether the process has loaded torch's library (only an engine should)."""
    with contextlib.suppress(OSError):
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    return False


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its peak so far (VmHWM), in MiB; NaN once the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def zombies(server: Server) -> list[Proc]:
    return [p for p in session(server) if p.state == "Z"]


def segments(server: Server, worker_pid: int | None = None) -> list[str]:
    """The server's request segments in /dev/shm (all of them, or one worker's)."""
    prefix = f"bgem3-{server.process.pid}-" + (f"{worker_pid}-" if worker_pid else "")
    return sorted(p.name for p in SHM.iterdir() if p.name.startswith(prefix))


def leaked_segments(server: Server) -> list[str]:
    """Segments that no request and no worker's free list accounts for, when no request is
    in flight: each living worker keeps up to WORKER_KEEPS finished ones of POOLED_BYTES for
    the next requests (gpu_pool/wire/segment_pool.py); anything else was left behind."""
    kept: dict[str, list[str]] = {}
    leaked = []
    for name in segments(server):
        worker = name.split("-")[2]
        with contextlib.suppress(FileNotFoundError):
            pooled = (SHM / name).stat().st_size == POOLED_BYTES
            alive = Path(f"/proc/{worker}").exists()
            (kept.setdefault(worker, []) if pooled and alive else leaked).append(name)
    for names in kept.values():
        leaked += names[WORKER_KEEPS:]
    return sorted(leaked)


def shm_inodes() -> dict[int, str]:
    found = {}
    for path in SHM.iterdir():
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile
            found[path.stat().st_ino] = path.name
    return found


def deleted_mappings(pid: int) -> list[str]:
    """Request segments a process still maps although their name was removed."""
    with contextlib.suppress(OSError):
        return [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if "/bgem3-" in line and line.endswith("(deleted)")]
    return []


def blocked_signals(pid: int) -> set[signal.Signals]:
    mask = next(int(line.split()[1], 16) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("SigBlk:"))
    return {s for s in signal.Signals if s < 64 and mask & (1 << (s - 1))}


def wait_for(check: Callable[[], T], timeout: float, interval: float = 0.02, what: str = "") -> T:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(interval)


def queue_size(server: Server, auth: dict[str, str]) -> int:
    return requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()["batching"]["queue_size"]


def engine_restarts(server: Server, auth: dict[str, str]) -> int:
    engines = requests.get(f"{server.url}/stats", headers=auth, timeout=5).json()["engines"]
    return sum(int(e["restarts"]) for e in engines)


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP a process (the engine: requests pile up deterministically), SIGCONT on the way out."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def with_faults(env: dict[str, str]) -> dict[str, str]:
    """Server settings that put the engine-fault stand-in (engine_faults/) on the path."""
    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path}


class ShmTracker:
    """What a server's processes map from /dev/shm: request segments, and named
    semaphores (multiprocessing's ``sem.mp-*``, mapped under a temporary name, so
    they are told by inode). An engine killed with -9 leaves its semaphores
    behind until the master's resource tracker removes them at exit."""

    def __init__(self, server: Server) -> None:
        self.server, self.inodes = server, set[int]()

    def snapshot(self) -> None:
        """Call before killing a process of the server, and before stopping it."""
        for p in session(self.server):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{p.pid}/maps").read_text().splitlines():
                    fields = line.split()
                    if len(fields) >= 6 and fields[5].startswith("/dev/shm/"):
                        self.inodes.add(int(fields[4]))

    def assert_left_nothing(self, timeout: float = 10.0) -> None:
        """After the master exited: no process of its session, nothing of it in /dev/shm."""
        server = self.server
        wait_for(lambda: not session(server), timeout, what="the server's processes to end")
        left = [name for inode, name in shm_inodes().items() if inode in self.inodes] + segments(server)
        assert not left, f"left in /dev/shm after shutdown: {sorted(left)}"
