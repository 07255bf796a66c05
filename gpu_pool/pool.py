"""The master's side: channels, engine processes, their supervision and shutdown.

``EnginePool`` is created in the gunicorn master before any web worker forks, so
every worker inherits the pipes and shared counters. Web workers take a *slot*
(an answer pipe and an in-flight counter of their own), handed out by the
master in ``pre_fork`` and given back in ``child_exit``. Engines are started
with the ``spawn`` method: a fresh interpreter with torch, none of gunicorn's
state. A supervisor thread restarts an engine that dies and bumps its
``generation``, which tells the web workers to fail what they had in flight.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait

from gpu_pool import protocol, segment
from gpu_pool.engine import EngineSpec, main
from gpu_pool.protocol import Stop
from gpu_pool.shared import EngineShared, EngineState

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


class EnginePool:
    def __init__(self, specs: list[EngineSpec], n_slots: int) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.shm_prefix = f"bgem3-{os.getpid()}-"
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
        self._supervisor: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        for handle in self.engines:
            self._spawn(handle)
        self._supervisor = threading.Thread(target=self._supervise, name="engine-supervisor", daemon=True)
        self._supervisor.start()

    def _spawn(self, handle: EngineHandle) -> None:
        handle.shared.state.value = EngineState.LOADING
        handle.process = self.ctx.Process(
            target=main,
            args=(handle.spec, handle.requests_in, self.slot_writers, handle.shared),
            name=f"bge-m3-engine-{handle.spec.index}",
            daemon=False,
        )
        handle.process.start()
        log.info("Started engine %d (pid %d) on device %s", handle.spec.index, handle.process.pid,
                 handle.spec.device)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            alive = {h.process.sentinel: h for h in self.engines if h.process is not None}
            for sentinel in wait(list(alive), timeout=0.5):
                if self._stopping.is_set():
                    return
                self._restart(alive[sentinel])

    def _restart(self, handle: EngineHandle) -> None:
        process = handle.process
        process.join()
        was_ready = handle.shared.state.value == EngineState.READY
        handle.shared.state.value = EngineState.UNAVAILABLE
        handle.shared.generation.value += 1  # web workers fail what this engine held
        handle.shared.restarts.value += 1
        handle.failures = 0 if was_ready else handle.failures + 1
        delay = _RESTART_BACKOFF_S[min(handle.failures, len(_RESTART_BACKOFF_S) - 1)]
        log.error("Engine %d (pid %d) exited with code %s; restarting in %.1f s",
                  handle.spec.index, process.pid, process.exitcode, delay)
        handle.process = None
        if not self._stopping.wait(delay):
            self._spawn(handle)

    def stop(self, timeout: float = 10.0) -> None:
        """Let each engine finish the batch in hand, then make sure it is gone."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=2)
        for handle in self.engines:
            handle.shared.state.value = EngineState.STOPPED
            if handle.process is not None and handle.process.is_alive():
                handle.requests_out.send_bytes(protocol.encode(Stop()))
        deadline = time.monotonic() + timeout
        for handle in self.engines:
            if handle.process is None:
                continue
            handle.process.join(max(0.0, deadline - time.monotonic()))
            if handle.process.is_alive():
                log.warning("Engine %d did not stop in time; killing it", handle.spec.index)
                handle.process.kill()
                handle.process.join(5)
        removed = segment.unlink_prefix(self.shm_prefix)
        if removed:
            log.info("Removed %d leftover shared-memory segments", removed)

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
        # Answers to the dead worker may still sit in the pipe; drain them.
        while self.slot_readers[slot].poll():
            self.slot_readers[slot].recv_bytes()
        self.free_slots.append(slot)


def engine_specs(devices: list[str], template: EngineSpec) -> list[EngineSpec]:
    return [replace(template, index=i, device=device) for i, device in enumerate(devices)]
