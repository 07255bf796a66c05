"""The folder where every web worker's request metrics live, for prometheus-client's multiprocess mode.

Each gunicorn worker writes its counters to memory-mapped files in one folder,
and ``/metrics`` (served by any worker) adds up the files of all of them. The
master makes a fresh private folder in ``on_starting``, before any worker
forks, and sets ``PROMETHEUS_MULTIPROC_DIR`` so that the workers' prometheus
client writes there; ``child_exit`` drops a dead worker's live gauges;
``on_exit`` removes the folder. A fresh folder per start matters: files left by
a previous server would be added to this one's counts.

This module does not import prometheus_client at import time: the master
imports it before the variable is set, and prometheus_client picks its storage
once, when first imported.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("embsvc.api.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"


def create() -> Path:
    """Make the folder and point this process's (and its future children's) environment at it."""
    # /dev/shm: memory, and writable in the Kubernetes pod whose root filesystem is read-only.
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix=f"embsvc-metrics-{os.getpid()}-", dir=base))
    if os.environ.get(ENV):
        log.info("Ignoring %s=%s: the server keeps its metrics in a folder of its own", ENV, os.environ[ENV])
    os.environ[ENV] = str(path)
    return path


def mark_dead(path: Path, pid: int) -> None:
    from prometheus_client import multiprocess

    # prometheus_client leaves this function unannotated.
    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(ENV) == str(path):
        del os.environ[ENV]
