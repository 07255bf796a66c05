"""Keeping glibc's malloc from holding on to memory in long-running, many-threaded processes.

Two habits of glibc made resident memory creep up under load (the soak, bench/chaos.py --soak,
measured +15 to +40 % over a minute), without any leak:

- each thread may get a malloc arena of its own (up to 8 per core), and memory
  freed across many arenas is seldom returned: a web worker has 32 threads;
- freed memory inside the heap stays mapped: only the top of the heap goes back
  by itself, so the engine kept the pages of its largest batches and a web worker
  those of its largest answers (glibc raises its threshold for mmap to each large
  block freed, so later ones come from the heap).

Two arenas per process fix the first at little cost (the web workers' threads
mostly wait, the engine has few). For the second, the engine and each web worker
trim their heap whenever they have been idle for a moment, which costs nothing under
load (a fixed mmap threshold would instead fault a large answer's pages in anew each
time: 25 % slower JSON for a 17 MB ColBERT answer).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable

_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc: nothing to tune


def limit_arenas(arenas: int = 2) -> None:
    """Call first thing in a new process; an operator's MALLOC_ARENA_MAX wins."""
    libc = _glibc()
    if libc is not None and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(_M_ARENA_MAX, arenas)


def trim() -> None:
    """Give the heap's free pages back to the system now (glibc only; elsewhere nothing to do)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def trim_when_idle(in_hand: Callable[[], int], finished: Callable[[], int], every_s: float = 1.0) -> None:
    """Start a thread that gives the heap's free pages back once nothing is ``in_hand()`` and
    ``finished()`` (a count of work done, that only grows) has moved since the last trim. A count,
    not a look at ``in_hand()`` each tick: a burst of work that begins and ends between two ticks,
    or after a tick that found a lull, would otherwise leave its pages held until the next burst."""
    libc = _glibc()
    if libc is None:
        return

    def loop() -> None:
        trimmed_at = finished()
        while True:
            threading.Event().wait(every_s)
            done = finished()
            if done != trimmed_at and in_hand() == 0:
                libc.malloc_trim(0)
                trimmed_at = done

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()
