"""A web worker freezes what it has loaded out of the garbage collector's reach
(embsvc/master/hooks.py ``post_worker_init``), so that a full collection stalls no request.
The engine does the same after its warm-up (gpu_pool/engine/main.py; bench.priority shows it).

The hook runs in a fresh interpreter of its own: there nothing is frozen before it, and
nothing this test process (pytest and the modules other tests loaded) holds counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOOK = """
import gc
from embsvc.master import hooks
before = gc.get_freeze_count()
hooks.post_worker_init(None)
print(before, gc.get_freeze_count())
"""


def test_a_web_worker_freezes_what_it_has_loaded():
    done = subprocess.run([sys.executable, "-c", HOOK], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    before, after = map(int, done.stdout.split())
    assert before == 0
    assert after > 10_000  # the app's modules and libraries
