"""Every line of gpu_pool that runs on an accelerator only (marked ``# cuda-only``, the first
line of each such block) runs in the suite: the simulated-device tests
(tests/integration/test_simulated_device.py), their engine processes included, under coverage.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import coverage
import pytest

ROOT = Path(__file__).resolve().parents[2]
MARK = "# cuda-only"
SIMULATED = "tests/integration/test_simulated_device.py"


def marked_lines() -> dict[Path, set[int]]:
    found: dict[Path, set[int]] = {}
    for path in sorted((ROOT / "gpu_pool").rglob("*.py")):
        lines = {n for n, line in enumerate(path.read_text().splitlines(), 1) if line.rstrip().endswith(MARK)}
        if lines:
            found[path] = lines
    return found


def test_the_marks_are_where_the_accelerator_is_called():
    marked = marked_lines()
    assert {path.name for path in marked} >= {"transfer.py", "load.py", "device_thread.py"}
    assert sum(map(len, marked.values())) >= 15


@pytest.mark.slow  # the simulated-device tests again, under coverage
@pytest.mark.timeout(900)  # two engine starts under coverage, on a loaded machine: minutes
def test_the_simulated_device_runs_every_cuda_only_line(tmp_path):
    rc = tmp_path / "coveragerc"
    # multiprocessing: the spawned engines are measured too (they read these settings from the file).
    rc.write_text(f"[run]\nconcurrency = multiprocessing,thread\nparallel = true\nsource = gpu_pool\n"
                  f"data_file = {tmp_path / '.coverage'}\n")
    run = subprocess.run([sys.executable, "-m", "coverage", "run", f"--rcfile={rc}", "-m", "pytest", "-q",
                          "-p", "no:randomly", "-p", "no:cacheprovider", SIMULATED,
                          # FlagEmbedding's parity takes a minute to load and runs no line the others do
                          # not; a device fault ends its engine with os._exit, before coverage saves.
                          "-k", "not references_vectors and not device_fault"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    measured = coverage.Coverage(config_file=str(rc))
    measured.combine()
    data = measured.get_data()
    missing = [f"{path.relative_to(ROOT)}:{line}" for path, lines in marked_lines().items()
               for line in sorted(lines - set(data.lines(str(path)) or ()))]
    assert not missing, f"CUDA-only lines the simulated device never ran: {missing}"
