"""When the idle trim (runtime/malloc.py ``trim_when_idle``) gives the heap back: once per burst of
finished work, even a burst that began and ended between two of its ticks, never while work is in
hand, and not again while nothing new was done. A recorder stands in for glibc here; the
soak tests (tests/e2e/test_reliability_soak.py) see a real worker's memory shrink."""

from __future__ import annotations

import time

from runtime import malloc
from testkit import procs

TICK_S = 0.02


class Recorder:
    def __init__(self) -> None:
        self.trims = 0

    def malloc_trim(self, pad: int) -> int:
        self.trims += 1
        return 1


class Work:
    def __init__(self) -> None:
        self.in_hand = 0
        self.finished = 0


def started(monkeypatch) -> tuple[Recorder, Work]:
    libc, work = Recorder(), Work()
    monkeypatch.setattr(malloc, "_glibc", lambda: libc)
    malloc.trim_when_idle(lambda: work.in_hand, lambda: work.finished, every_s=TICK_S)
    return libc, work


def quiet(ticks: int = 10) -> None:
    time.sleep(ticks * TICK_S)


def test_nothing_done_nothing_trimmed(monkeypatch):
    libc, _ = started(monkeypatch)
    quiet()
    assert libc.trims == 0


def test_a_burst_between_two_ticks_is_trimmed_once(monkeypatch):
    libc, work = started(monkeypatch)
    work.finished += 3  # begun and ended without a tick seeing anything in hand
    procs.wait_for(lambda: libc.trims == 1, 2, what="the trim after the burst")
    quiet()
    assert libc.trims == 1


def test_no_trim_while_work_is_in_hand(monkeypatch):
    libc, work = started(monkeypatch)
    work.in_hand, work.finished = 1, 5  # some done, one still in hand
    quiet()
    assert libc.trims == 0
    work.in_hand, work.finished = 0, 6
    procs.wait_for(lambda: libc.trims == 1, 2, what="the trim once idle")
