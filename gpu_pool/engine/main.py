"""The engine process's entry point: signals, malloc, logging, the model, then the loop.

Started by the master's pool (gpu_pool/pool.py) with multiprocessing's ``spawn``:
a fresh interpreter with torch and none of gunicorn's state.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

from gpu_pool.engine.answers import DeviceFault
from gpu_pool.engine.loop import Engine
from gpu_pool.engine.spec import EngineSpec
from gpu_pool.model.port import Model
from gpu_pool.wire.shared import EngineShared, EngineState
from runtime import logs, malloc

log = logging.getLogger("gpu_pool.engine")

# The terminal's and the service manager's signals (sent to the whole process
# group) stay blocked in the engine: the master decides when an engine stops,
# after the web workers have finished their requests.
BLOCKED_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})
DEVICE_FAULT_EXIT = 70  # the device failed (sysexits' EX_SOFTWARE): the pool starts the engine again


def run(spec: EngineSpec, requests: Connection, slots: list[Connection], shared: EngineShared) -> None:
    """The process: the signals stay blocked (they are inherited blocked; this also
    covers every thread the engine starts), malloc keeps to two arenas and gives
    memory back when no request is waiting, then the model and the loop."""
    signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_SIGNALS)
    malloc.limit_arenas()
    malloc.trim_when_idle(shared.requests_in_flight, shared.requests_done)
    logs.configure(spec.log_level, spec.log_format)
    # OpenMP keeps its own defaults (its threads spin a moment between kernels, then sleep):
    # asleep at once (OMP_WAIT_POLICY=PASSIVE) each wake-up cost the full model's 16-token
    # query 49 ms against 37 ms, while the tiny model's requests/s and the mixed load's
    # tokens/s were no better for it (measured A/B; docs/performance.md). An operator's
    # OpenMP settings win, as always.
    shared.state.value = EngineState.LOADING
    model = _load(spec, shared)
    for conn in slots:
        # A slot whose worker is gone must not block the engine: its answers are dropped.
        os.set_blocking(conn.fileno(), False)
    engine = Engine(spec, model, requests, slots, shared)
    engine.warm_up()
    # The ~400,000 objects of torch, transformers and the model are kept for good: frozen, the
    # garbage collector's full collections skip them. Walking them took 197 ms (measured on
    # the full model), a stall of whichever pass it fell into: the slowest queries under bulk load.
    gc.freeze()
    shared.state.value = EngineState.READY
    try:
        engine.serve()
    except DeviceFault as exc:
        log.critical("Engine %d ends: its device failed (%s); the pool starts another", spec.index, exc)
        logging.shutdown()
        # At once: a failed CUDA context can make torch's exit handlers fail or hang.
        os._exit(DEVICE_FAULT_EXIT)
    log.info("Engine %d stopped", spec.index)


def _load(spec: EngineSpec, shared: EngineShared) -> Model:
    from gpu_pool.model.load import load  # torch is imported here, in the engine process only

    threads = spec.threads or len(os.sched_getaffinity(0))
    model = load(Path(spec.model_path), spec.device, spec.dtype, threads, spec.reranker_path)
    shared.dim.value = model.dim
    shared.set_info(model.info())  # the device and dtype, and the cross-encoder's (None: not loaded)
    return model
