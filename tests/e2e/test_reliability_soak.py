"""The soak of bench/chaos.py without faults, short: real nginx in front of real gunicorn and
engine, many clients, mixed requests; no error but the deliberate ones, no process restarted,
none growing by more than 10 % (and 2 MiB) (the full run: python -m bench.chaos --soak,
docs/reliability.md); and web workers that give back the memory of large answers once idle."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench import chaos
from testkit import procs
from tests.e2e.conftest import post


@pytest.mark.slow
def test_a_short_soak_behind_nginx_passes():
    # Not under pytest's tmp_path, which is private to its user: nginx runs as another one.
    workdir = Path(tempfile.mkdtemp(prefix="embsvc-soak-"))
    try:
        os.chmod(workdir, 0o755)
        result = chaos.run(clients=16, seconds=15, warmup=5, workdir=workdir, plan=chaos.SOAK)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert result["verdict"] == "PASS", result
    assert result["faults"] == {"engine_kills": 0, "worker_kills": 0, "sighups": 0, "skipped": []}
    assert result["engine_restarts"] == 0 and result["new_processes"] == [], result
    assert result["requests"] > 200, result
    roles = {row["role"] for row in result["rss_mb"]}
    for role in ("engine", "web worker", "nginx worker", "gunicorn master"):
        assert role in roles, f"{role} missing from the memory table: {result['rss_mb']}"
    assert all(row["peak_mb"] >= row["start_mb"] for row in result["rss_mb"] if row["start_mb"]), result["rss_mb"]


def test_a_web_worker_gives_back_the_memory_of_large_answers_once_idle(server):
    # Each answer is megabytes of JSON (ColBERT rows of 8 long texts); freed, its pages stay in
    # the heap until the worker, idle, trims it (runtime/malloc.py): 4 to 6 MiB a worker here,
    # where without the trim their memory stays flat. 2 MiB, not both workers' sum: one may have
    # trimmed already, between its last answer and the others' (the last one cannot have).
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    body = {"input": [" ".join(random.Random(i).choices(words, k=400)) for i in range(8)],
            "return_dense": True, "return_sparse": True, "return_colbert": True}
    with ThreadPoolExecutor(8) as pool:
        for answer in pool.map(lambda _: post(server, "/v1/embeddings", body), range(48)):
            assert answer.status_code == 200, answer.text
    workers = procs.worker_pids(server)
    loaded = sum(procs.rss_mb(pid) for pid in workers)
    procs.wait_for(lambda: sum(procs.rss_mb(pid) for pid in workers) < loaded - 2, 10, interval=0.2,
                   what=f"the web workers' memory ({loaded:.1f} MiB after the answers) to shrink by 2 MiB")
