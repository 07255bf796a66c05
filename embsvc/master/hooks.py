"""The server's life in gunicorn's hooks (wired in gunicorn.conf.py).

Master: ``on_starting`` reads the settings, makes sure the model folders (bge-m3's, and the
cross-encoder's where one is configured) are complete (downloading each if empty) and starts
the engine pool; ``pre_fork``
and ``child_exit`` hand out and take back web worker slots; ``on_exit`` stops
the engines and removes every shared-memory segment.
Worker: ``post_fork`` connects the worker to the pool; ``embsvc.wsgi`` then
builds the app with ``settings()`` and ``engine_client()``.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from pathlib import Path
from typing import Protocol

from embsvc.config import DEFAULT_MAX_BATCH_TOKENS as DEFAULT_MAX_BATCH_TOKENS  # re-exported: tests read it here
from embsvc.config import ConfigError, Settings, load_settings
from embsvc.master import metrics_dir as metrics_folder
from embsvc.master import shared_memory
from embsvc.master.model_files import ModelFilesError, ensure_model, ensure_reranker
from gpu_pool import EngineClient, EnginePool, EngineSpec, NoFreeSlot, engine_specs, is_cpu
from runtime import logs, malloc

log = logging.getLogger("embsvc.master.hooks")

_NO_SLOT_RETRY_S = 1.0


class _Worker(Protocol):
    """What the hooks use of a gunicorn worker; ``slot`` is set on it by ``pre_fork``."""

    pid: int
    slot: int | None


_settings: Settings | None = None
_pool: EnginePool | None = None
_client: EngineClient | None = None
_metrics_dir: Path | None = None


def on_starting(server: object) -> None:
    global _settings, _pool
    try:
        _settings = load_settings()
    except ConfigError as exc:
        raise RuntimeError(f"configuration error: {exc}") from None
    logs.configure(_settings.log_level, _settings.log_format)
    try:
        ensure_model(_settings.model_path, _settings.model_name)
        if _settings.reranker_path is not None:
            ensure_reranker(_settings.reranker_path, _settings.reranker_name)
    except ModelFilesError as exc:
        raise RuntimeError(str(exc)) from None
    global _metrics_dir
    _metrics_dir = metrics_folder.create()  # before any worker forks: they inherit its variable
    _pool = EnginePool(engine_specs(list(_settings.devices), _engine_template(_settings)),
                       n_slots=2 * _settings.web_concurrency + 2)
    shared_memory.check(_settings, len(_pool.engines))
    _pool.start()


def _engine_template(s: Settings) -> EngineSpec:
    return EngineSpec(
        index=0,
        device="auto",
        dtype=s.dtype,
        model_path=str(Path(s.model_path).resolve()),
        reranker_path=str(s.reranker_path.resolve()) if s.reranker_path is not None else "",
        batch_size=s.batch_size,
        max_batch_tokens=s.batch_tokens(),
        batch_timeout_ms=s.batch_timeout_ms,
        concurrency=s.processing_concurrency,
        interactive_max_wait_ms=s.interactive_max_wait_ms,
        bulk_share=s.bulk_share,
        threads=_cpu_threads(s.devices),
        log_level=s.log_level,
        log_format=s.log_format,
    )


def _cpu_threads(devices: tuple[str, ...]) -> int:
    """Torch threads per CPU engine: the cores shared out among the CPU engines (0: all of them)."""
    cpu_engines = sum(is_cpu(d) for d in devices)
    return max(1, len(os.sched_getaffinity(0)) // cpu_engines) if cpu_engines > 1 else 0


def pre_fork(server: object, worker: _Worker) -> None:
    try:
        worker.slot = _require_pool().take_slot()
    except NoFreeSlot:
        # An exception here would stop the master, engines and all. Slots run
        # out when workers outnumber them (SIGTTIN, a raised WEB_CONCURRENCY
        # reloaded with SIGHUP, old workers slow to finish): this worker leaves
        # at once and gunicorn starts another, which gets the next free slot.
        log.error("No free engine slot for a new web worker (%d slots); retrying in %.0f s",
                  _require_pool().n_slots, _NO_SLOT_RETRY_S)
        worker.slot = None


def post_fork(server: object, worker: _Worker) -> None:
    global _client
    malloc.limit_arenas()
    s = _require_settings()
    _yield_to_engines(s.web_worker_nice)
    pool = _require_pool()
    pool.detach_from_engines()
    if worker.slot is None:
        time.sleep(_NO_SLOT_RETRY_S)  # not a tight fork loop while the old workers finish
        sys.exit(0)
    _client = EngineClient(pool, worker.slot, s.max_queue_size, s.request_timeout_s, s.interactive_max_tokens)


def _yield_to_engines(nice: int) -> None:
    """Before any thread of the worker starts (each inherits it): the engines, the master's
    children, keep the master's niceness and so go first on a core they share with a web worker
    (docs/performance.md, "Lanes"). Where the system refuses it, the worker goes on without."""
    try:
        os.nice(nice)
    except OSError as exc:
        log.warning("WEB_WORKER_NICE=%d not applied: %s", nice, exc)


def post_worker_init(worker: _Worker) -> None:
    # The app and its libraries are kept for good: frozen, the garbage collector's full
    # collections (10 ms over their ~37,000 objects) skip them, and so stall no request.
    gc.freeze()


def child_exit(server: object, worker: _Worker) -> None:
    if worker.slot is not None:
        _require_pool().release_slot(worker.slot, worker.pid)
    if _metrics_dir is not None:
        metrics_folder.mark_dead(_metrics_dir, worker.pid)


def on_exit(server: object) -> None:
    if _pool is not None:
        _pool.stop()
        log.info("Engines stopped; shared memory cleaned")
    if _metrics_dir is not None:
        metrics_folder.remove(_metrics_dir)


def settings() -> Settings:
    return _require_settings()


def engine_client() -> EngineClient:
    if _client is None:
        raise RuntimeError("embsvc.wsgi runs inside gunicorn: gunicorn -c gunicorn.conf.py embsvc.wsgi:app")
    return _client


def metrics_dir() -> Path | None:
    return _metrics_dir


def _require_settings() -> Settings:
    if _settings is None:
        raise RuntimeError("the server was not started through gunicorn.conf.py")
    return _settings


def _require_pool() -> EnginePool:
    if _pool is None:
        raise RuntimeError("the server was not started through gunicorn.conf.py")
    return _pool
