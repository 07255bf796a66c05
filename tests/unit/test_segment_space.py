"""A small or full /dev/shm: segments reserve their bytes when made, so running out is
``NoSpace`` in the web worker and never SIGBUS in any process.

Each case runs in a child process with a private mount namespace whose /dev/shm is a
1 MiB tmpfs (root and ``unshare``, as in CI); a child killed by SIGBUS exits with -7.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRELUDE = """
import os, threading, time
import numpy as np
from gpu_pool.wire import segment, segment_pool
from gpu_pool.wire.protocol import Kind
from gpu_pool.wire.segment import Layout, NoSpace, Segment
from gpu_pool.wire.segment_pool import WorkerSegments

KIB = 1024
def layout(kib):  # a sparse-only layout of about ``kib`` KiB
    n = kib * KIB // 8
    return Layout(1, n, 8, Kind.SPARSE)
def fill(seg):
    for array in seg.arrays.values():
        array[...] = 1
def refused(make):
    try:
        make()
    except NoSpace as exc:
        return exc
    raise AssertionError("not refused")
"""


def in_small_shm(code: str, size: str = "1m") -> str:
    """Run ``code`` with a /dev/shm of ``size``; returns what it printed."""
    script = PRELUDE + textwrap.dedent(code)
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "$0" -c "$1"',
         sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"exit {result.returncode} (-7 is SIGBUS):\n{result.stdout}{result.stderr}"
    return result.stdout


def test_a_segment_that_does_not_fit_is_refused_and_leaves_nothing():
    out = in_small_shm("""
        first = Segment.create("a", layout(600))
        exc = refused(lambda: Segment.create("b", layout(600)))
        assert not exc.never_fits() and exc.space.size == 1024 * KIB, exc.space
        assert "shared memory is full" in str(exc) and "/dev/shm" in str(exc), exc
        huge = refused(lambda: Segment.create("c", layout(2048)))
        assert huge.never_fits() and "holds only 1.0 MiB in all" in str(huge), huge
        assert sorted(os.listdir("/dev/shm")) == ["a"]
        fill(first)
        first.close()
        print(os.listdir("/dev/shm"))
    """)
    assert out.strip() == "[]"


def test_every_byte_of_every_segment_made_can_be_written():
    """Without the reservation, these writes are what killed the workers and the engine."""
    out = in_small_shm("""
        made = []
        while True:
            try:
                made.append(Segment.create(f"s{len(made)}", layout(100)))
            except NoSpace:
                break
        # The engine's side: its own mapping of each segment.
        for seg in made:
            fill(seg)
            fill(Segment.attach(seg.name, seg.layout))
        print(len(made))
    """)
    assert int(out) >= 8


def test_a_kept_segment_reserves_more_before_a_larger_layout_uses_it():
    in_small_shm("""
        worker = WorkerSegments("w-")
        small = worker.take(layout(10))
        name = small.name
        small.close()
        blocker = Segment.create("blocker", layout(700))
        # The kept segment cannot grow to 400 KiB: refused, not a signal on the first write.
        refused(lambda: worker.take(layout(400), wait_s=0))
        blocker.close()
        seg = worker.take(layout(400), wait_s=0)
        fill(seg)
        assert os.stat(f"/dev/shm/{seg.name}").st_blocks * 512 >= 400 * KIB
        assert seg.name != name  # the kept one was given back when space ran out
    """)


def test_a_worker_gives_back_the_segments_it_keeps_when_space_runs_out():
    in_small_shm("""
        worker = WorkerSegments("w-")
        kept = [worker.take(layout(250)) for _ in range(3)]
        for seg in kept:
            seg.close()
        assert len(os.listdir("/dev/shm")) == 3  # 750 KiB kept for reuse
        seg = worker.take(layout(2 * 250 + 200), wait_s=0.5)
        fill(seg)
        assert os.listdir("/dev/shm") == [seg.name]
    """)


def test_a_full_shm_is_waited_for_a_bounded_time():
    in_small_shm("""
        worker = WorkerSegments("w-")
        blocker = Segment.create("blocker", layout(700))
        started = time.monotonic()
        refused(lambda: worker.take(layout(500), wait_s=0.3))
        waited = time.monotonic() - started
        assert 0.3 <= waited < 2, waited
        # Space freed while a request waits serves it.
        threading.Timer(0.2, blocker.close).start()
        fill(worker.take(layout(500), wait_s=5))
        # A request larger than the whole of /dev/shm is refused at once.
        started = time.monotonic()
        assert refused(lambda: worker.take(layout(2048), wait_s=5)).never_fits()
        assert time.monotonic() - started < 0.5
    """)


def test_the_space_and_what_a_server_holds_are_reported():
    out = in_small_shm("""
        seg = Segment.create("bgem3-1-2-3", layout(300))
        Segment.create("other", layout(100))
        now = segment.space()
        assert now.path == "/dev/shm" and now.size == 1024 * KIB
        assert now.used >= 400 * KIB and now.free == now.size - now.used, now
        print(segment.held("bgem3-1-"))
    """)
    assert 300 * 1024 <= int(out) < 320 * 1024


def test_the_space_a_full_queue_needs():
    from gpu_pool.wire.protocol import Kind
    from gpu_pool.wire.segment import Layout
    from gpu_pool.wire.segment_pool import bytes_needed

    one = Layout(1, 8192, 1024, Kind.DENSE | Kind.SPARSE | Kind.COLBERT).size()
    assert 32 << 20 < one < 33 << 20  # bge-m3: 8191 ColBERT rows of 1024 floats
    assert bytes_needed(50, 8192, 1024) == 50 * one
