"""The soak of bench/soak.py, short: real nginx in front of real gunicorn and engine,
many clients, mixed requests; no error but the deliberate ones, no process restarted,
none growing by more than 10 % (the full run: python -m bench.soak, docs/reliability.md)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from bench import soak


@pytest.mark.slow
def test_a_short_soak_behind_nginx_passes(capsys):
    # Not under pytest's tmp_path, which is private to its user: nginx runs as another one.
    workdir = Path(tempfile.mkdtemp(prefix="embsvc-soak-"))
    try:
        os.chmod(workdir, 0o755)
        failures = soak.run(clients=16, seconds=15, warmup=5, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = capsys.readouterr().out
    assert not failures, report
    assert "verdict: PASS" in report
    served = int(report.split("requests served: ")[1].split()[0])
    assert served > 200, report
    for role in ("engine", "web worker", "nginx worker", "gunicorn master"):
        assert f"  {role} " in report, f"{role} missing from the memory table:\n{report}"
