"""The folder where every web worker's request metrics live, for prometheus-client's multiprocess mode.

Each gunicorn worker writes its counters to memory-mapped files in one folder,
and ``/metrics`` (served by any worker) adds up the files of all of them. The
master makes a fresh private folder in ``on_starting``, before any worker
forks, and sets ``PROMETHEUS_MULTIPROC_DIR`` so that the workers' prometheus
client writes there; ``child_exit`` drops a dead worker's live gauges;
``on_exit`` removes the folder. A fresh folder per start matters: files left by
a previous server would be added to this one's counts. It lives in the temp folder,
away from /dev/shm (see ``create``).

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
SHM = "/dev/shm"


def create() -> Path:
    """Make the folder and point this process's (and its future children's) environment at it."""
    # In the temp folder (TMPDIR, /tmp: an emptyDir in the Kubernetes pod whose root file
    # system is read-only), not in /dev/shm: prometheus_client grows its files with truncate
    # and writes them through mmap, so on a /dev/shm filled by requests' arrays a new page
    # would kill the worker with SIGBUS instead of failing a request.
    prefix = f"embsvc-metrics-{os.getpid()}-"
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix))
    except OSError as exc:  # no writable temp folder at all
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=SHM))
        log.warning("No writable temp folder (%s): the metrics live in %s, where a full /dev/shm can kill a web "
                    "worker; mount a writable /tmp or set TMPDIR", exc, path)
    if os.stat(path).st_dev == os.stat(SHM).st_dev:
        log.warning("The metrics folder %s is on the file system of /dev/shm, where a full /dev/shm can kill a "
                    "web worker; set TMPDIR to a folder elsewhere", path)
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
