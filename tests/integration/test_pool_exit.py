"""A master that exits without stopping its pool (gunicorn skips on_exit when its main
loop dies) still exits at once, and takes its engine along."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MASTER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from gpu_pool.pool import EnginePool
from testkit.engines import engine_spec, wait_ready
pool = EnginePool([engine_spec(Path({model!r}))], n_slots=1)
pool.start()
wait_ready(pool)
print(pool.engines[0].process.pid, flush=True)
sys.exit(3)  # no pool.stop()
"""


@pytest.mark.slow
def test_a_master_exiting_without_stop_takes_its_engine_along(tiny_model):
    master = subprocess.Popen([sys.executable, "-c", MASTER.format(root=str(ROOT), model=str(tiny_model))],
                              stdout=subprocess.PIPE, text=True)
    try:
        engine = int(master.stdout.readline())
        assert master.wait(timeout=30) == 3, "the master hung at exit waiting for its engine"
    finally:
        master.kill()
        master.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(engine, 0)  # gone and reaped, not left running or as a zombie
