"""The master's side: channels, engine processes, their supervision and shutdown.

``EnginePool`` is created in the gunicorn master before any web worker forks, so
every worker inherits the pipes and shared counters. Web workers take a *slot*
(an answer pipe and an in-flight counter of their own), handed out by the
master in ``pre_fork`` and given back in ``child_exit``. Engines are started
with the ``spawn`` method: a fresh interpreter with torch, none of gunicorn's
state. A supervisor thread restarts an engine that dies and bumps its
``generation``, which tells the web workers to fail what they had in flight.

Engines ignore the terminal's and the service manager's signals (SIGINT,
SIGTERM, SIGHUP, SIGQUIT sent to the whole process group): the master decides
when an engine stops, after the web workers have finished their requests.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import cast

from gpu_pool.engine import main as engine_main
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.wire import protocol, segment
from gpu_pool.wire.protocol import Stop
from gpu_pool.wire.shared import EngineShared, EngineState

log = logging.getLogger("gpu_pool.pool")

_RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10, 30)


@dataclass
class EngineHandle:
    spec: EngineSpec
    shared: EngineShared
    requests_in: Connection  # the engine's end
    requests_out: Connection  # the web workers' end
    process: multiprocessing.process.BaseProcess | None = None
    failures: int = 0


class NoFreeSlot(RuntimeError):
    pass


_pools = itertools.count(1)  # pools made in this process


def _shm_prefix(pool: int) -> str:
    """The first part of the names of a pool's segments: the master's pid, and after the first
    pool of a process its number too. The first pool's is not a prefix of the later ones', so a
    pool stopping never removes the segments of another one in the same process (tests run
    several); a server has one, named by its master's pid alone."""
    return f"bgem3-{os.getpid()}-" if pool == 1 else f"bgem3-{os.getpid()}.{pool}-"


class EnginePool:
    def __init__(self, specs: list[EngineSpec], n_slots: int) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.shm_prefix = _shm_prefix(next(_pools))
        self.n_slots = n_slots
        answer_pipes = [self.ctx.Pipe(duplex=False) for _ in range(n_slots)]
        self.slot_readers = [r for r, _ in answer_pipes]
        self.slot_writers = [w for _, w in answer_pipes]
        self.free_slots = list(range(n_slots))
        self.engines: list[EngineHandle] = []
        for spec in specs:
            reader, writer = self.ctx.Pipe(duplex=False)
            self.engines.append(EngineHandle(spec, EngineShared(self.ctx, n_slots), reader, writer))
        self._stopping = threading.Event()
        self._stopped = False
        self._supervisor: threading.Thread | None = None
        self._master_pid = os.getpid()

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        atexit.register(self._stop_at_exit)
        for handle in self.engines:
            self._spawn(handle)
        self._supervisor = threading.Thread(target=self._supervise, name="engine-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self, handle: EngineHandle) -> None:
        handle.shared.state.value = EngineState.LOADING
        handle.process = self.ctx.Process(
            target=engine_main.run,
            args=(handle.spec, handle.requests_in, self.slot_writers, handle.shared),
            name=f"bge-m3-engine-{handle.spec.index}",
            daemon=False,
        )
        # Starting the resource tracker unblocks SIGINT and SIGTERM in this
        # thread; it must not happen inside the window below.
        resource_tracker.ensure_running()
        # Blocked while the engine is started, so that it inherits them blocked (as
        # CPython's resource tracker does): Ctrl-C, or systemd's SIGTERM to the whole
        # group, would otherwise kill it under requests the web workers still finish.
        # Signals that arrive meanwhile stay pending for this thread, not lost.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, engine_main.BLOCKED_SIGNALS)
        try:
            handle.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        log.info("Started engine %d (pid %d) on device %s", handle.spec.index, handle.process.pid,
                 handle.spec.device)

    def _supervise(self) -> None:
        # Each dead engine has its own restart time, so one engine's back-off
        # never delays restarting another.
        restart_at: dict[int, float] = {}
        while not self._stopping.is_set():
            now = time.monotonic()
            for i, when in list(restart_at.items()):
                if when <= now:
                    del restart_at[i]
                    self._spawn(self.engines[i])
            alive = {h.process.sentinel: i for i, h in enumerate(self.engines) if h.process is not None}
            timeout = min([0.5, *(when - now for when in restart_at.values())])
            # wait() returns some of the objects it is given: here the sentinels, ints.
            for sentinel in cast("list[int]", wait(list(alive), timeout=max(0.0, timeout))):
                if self._stopping.is_set():
                    return
                restart_at[alive[sentinel]] = time.monotonic() + self._on_death(self.engines[alive[sentinel]])

    def _on_death(self, handle: EngineHandle) -> float:
        """Fail what the dead engine held and clear its pipe; returns the delay before it is started again."""
        process = handle.process
        assert process is not None  # only engines with a process are waited on
        process.join()  # the sentinel fired: this returns at once and reaps it (unless gunicorn did)
        was_ready = handle.shared.state.value == EngineState.READY
        handle.shared.state.value = EngineState.UNAVAILABLE
        handle.shared.generation.value += 1  # web workers fail what this engine held
        handle.shared.restarts.value += 1
        # The jobs left in its pipe belong to the requests just failed, and it may
        # have died half-way through reading one: its successor starts on an empty pipe.
        dropped = _drain(handle.requests_in)
        handle.failures = 0 if was_ready else handle.failures + 1
        delay = _RESTART_BACKOFF_S[min(handle.failures, len(_RESTART_BACKOFF_S) - 1)]
        # exitcode is None when gunicorn's waitpid(-1) reaped the engine first.
        log.error("Engine %d (pid %d) exited with code %s; %d bytes of queued jobs dropped; restarting in %.1f s",
                  handle.spec.index, process.pid, process.exitcode, dropped, delay)
        handle.process = None
        return delay

    def _stop_at_exit(self) -> None:
        # The master can exit without on_exit (gunicorn's "Unhandled exception in
        # main loop"): then multiprocessing's exit handler, which runs after this
        # one, would wait forever for engines that ignore its SIGTERM. Forked web
        # workers inherit this handler; it is not theirs to act on.
        if os.getpid() == self._master_pid and not self._stopped:
            self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Let each engine finish the batches it holds, then make sure it is gone."""
        if self._stopped:
            return
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=2)
        for handle in self.engines:
            handle.shared.state.value = EngineState.STOPPED
            if handle.process is not None and _alive(handle.process):
                self._send_stop(handle)
        deadline = time.monotonic() + timeout
        for handle in self.engines:
            if handle.process is None:
                continue
            handle.process.join(max(0.0, deadline - time.monotonic()))
            if _alive(handle.process):
                log.warning("Engine %d did not stop in time; killing it", handle.spec.index)
                handle.process.kill()
                handle.process.join(5)
        removed = segment.unlink_prefix(self.shm_prefix)
        if removed:
            log.info("Removed %d leftover shared-memory segments", removed)
        _stop_resource_tracker()
        self._stopped = True

    @staticmethod
    def _send_stop(handle: EngineHandle) -> None:
        # The web workers are gone by now, so nothing else writes to this pipe;
        # a hung engine with a full pipe must not block the master's exit.
        os.set_blocking(handle.requests_out.fileno(), False)
        try:
            handle.requests_out.send_bytes(protocol.encode(Stop()))
        except BlockingIOError:
            log.warning("Engine %d is not reading its requests; it will be killed", handle.spec.index)

    def detach_from_engines(self) -> None:
        """In a forked web worker: the engines are the master's children, not this process's.

        Without this, multiprocessing's exit handler in every web worker tries to
        join them and logs an AssertionError each time a worker exits.
        """
        for handle in self.engines:
            if handle.process is not None:
                # private: no public way (nor a stub, hence the ignore)
                multiprocessing.process._children.discard(handle.process)  # type: ignore[attr-defined]

    # -- web worker slots ---------------------------------------------------------

    def take_slot(self) -> int:
        if not self.free_slots:
            raise NoFreeSlot("no free web worker slot; raise the slot count")
        return self.free_slots.pop(0)

    def release_slot(self, slot: int, worker_pid: int) -> None:
        """A web worker is gone: forget its in-flight count and its segments."""
        for handle in self.engines:
            handle.shared.in_flight[slot] = 0
        segment.unlink_prefix(f"{self.shm_prefix}{worker_pid}-")
        # Answers to the dead worker may still sit in the pipe, and it may have
        # died half-way through reading one: drop every byte, so that the next
        # worker in this slot starts on a whole message.
        _drain(self.slot_readers[slot])
        self.free_slots.append(slot)


def _stop_resource_tracker(timeout: float = 5.0) -> None:
    """Stop multiprocessing's resource tracker, a child of this process, and reap it.

    On stopping it removes what a killed engine left (its named semaphores).
    Stopped here, it is reaped by the master; otherwise it outlives the master
    and falls to PID 1, which in some containers never reaps it (a zombie).
    It waits for every holder of its pipe: a thread, so a stuck one cannot hang the exit.
    Not while another pool's engines live (tests run several pools in one process): they hold
    its pipe, so it would not stop, and the stuck thread would keep the tracker's lock, which
    the next engine started in this process waits for.
    """
    if multiprocessing.active_children():
        return
    stopper = threading.Thread(
        # private: no public way (nor a stub, hence the ignore)
        target=resource_tracker._resource_tracker._stop,  # type: ignore[attr-defined]
        daemon=True,
    )
    stopper.start()
    stopper.join(timeout)


def _alive(process: multiprocessing.process.BaseProcess) -> bool:
    # The sentinel, not is_alive(): gunicorn's waitpid(-1) may have reaped the
    # engine already, and then is_alive() says True for a process that is gone.
    try:
        sentinel = process.sentinel
    except ValueError:  # never started: its start() failed
        return False
    return not wait([sentinel], timeout=0)


def _drain(conn: Connection) -> int:
    """Discard every byte waiting in a pipe that nobody else reads now; returns the count."""
    dropped = 0
    while conn.poll(0):
        chunk = os.read(conn.fileno(), 1 << 16)
        if not chunk:
            break  # every writer is gone
        dropped += len(chunk)
    return dropped
