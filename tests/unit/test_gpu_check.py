"""The device check's own logic, on the CPU: how passes are packed, how a part's failure is kept,
how the targets are judged and the file named (after every part), how the clients are sized,
which /dev/shm the server gets, and FlagEmbedding's import where ``datasets`` does not import
(the whole check runs end to end with ``python -m bench.gpu.check --device cpu --model tiny --quick``)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench.gpu import check as gpu_check
from bench.gpu import parts as gpu_parts
from bench.gpu import server as gpu_server
from embsvc.config import default_workers
from gpu_pool.model.port import Outputs
from testkit.workload import texts

ROOT = Path(__file__).resolve().parents[2]
FULL = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
        "vocab_size": 250002}


def test_passes_are_longest_first_and_under_the_budget():
    lengths = [5, 300, 120, 300, 40, 700]
    packed = gpu_parts.passes(lengths, budget=600)
    assert [i for members in packed for i in members] == [5, 1, 3, 2, 4, 0]  # longest first, each once
    assert packed[0] == [5]  # longer than the budget: alone
    assert all(sum(lengths[i] for i in members) <= 600 for members in packed[1:])


def test_flops_per_token_is_the_encoders_matrix_work():
    assert gpu_check.flops_per_token(FULL) == 24 * 24 * 1024**2  # bench/run.py's figure without the ColBERT head


def test_parts_take_testkits_texts_where_the_check_wrote_none():
    args = argparse.Namespace(work=None, texts=5)
    assert gpu_parts._bulk_texts(args, 100) == texts(5)
    assert len(gpu_parts._bulk_texts(argparse.Namespace(work=None, texts=0), 7)) == 7


def test_closeness_compares_each_texts_sparse_weights_alone():
    dense = np.array([[1.0, 0.0], [0.0, 1.0]])
    colbert = np.ones((3, 2))
    want = Outputs(dense, np.array([1.0, 2.0, 3.0, 4.0, 5.0]), colbert)
    got = Outputs(dense, np.array([1.0, 2.0, 3.0, 4.0, 5.5]), colbert)
    ids = [np.zeros(2, dtype=np.int64), np.zeros(3, dtype=np.int64)]  # two texts: 2 and 3 tokens
    close = gpu_parts._closeness(got, want, ids)
    assert close["dense_cosine_min"] == 1.0 and close["colbert_cosine_min"] == 1.0
    assert close["sparse_max_abs_diff"] == 0.5
    second = float(gpu_parts.cosine_rows(np.array([3.0, 4.0, 5.5]), np.array([3.0, 4.0, 5.0])))
    assert close["sparse_cosine_min"] == round(second, 6) < 1.0


def parts(bulk: float, short: float, p99: float, lone: float, parity: bool, flag: float) -> dict:
    return {
        "build": {"config": FULL}, "peak": {"float16_tflops": 800.0},
        "server": {"server": {"bulk_dense": {"tokens_per_s": bulk},
                              "bulk_all_kinds_float16": {"tokens_per_s": 130_000.0},
                              "short_queries": {"requests_per_s": short, "p99_ms": p99},
                              "lone_query": {"p50_ms": lone},
                              "queries_under_bulk": {"p99_vs_lone_p50": 2.0}}},
        "flag": {"dense": {"tokens_per_s": flag}},
        "parity": {"flagembedding": {"within_cpu_tolerances": parity},
                   "float16_vs_float32": {"dense_cosine_min": 0.9995},
                   "bfloat16_vs_float32": {"dense_cosine_min": 0.998}},
        "engine": {"budgets": {"32768": {"dense": {"tokens_per_s": 400_000.0}}}},
    }


def test_the_summary_judges_each_target():
    summary = gpu_check.summary(parts(300_000, 6_000, 40, 8, True, 90_000), "cuda:0")
    targets = summary["targets"]
    assert targets["bulk_dense_tokens_per_s"] == {"value": 300_000, "target": ">= 250000", "met": True}
    assert targets["bulk_dense_vs_flagembedding"]["value"] == 3.33 and targets["bulk_dense_vs_flagembedding"]["met"]
    assert targets["short_queries_p99_ms"]["met"] and targets["lone_query_p50_ms"]["met"]
    assert targets["query_p99_under_bulk_vs_lone_p50"] == {"value": 2.0, "target": "<= 2.0", "met": True}
    assert targets["float32_parity_with_flagembedding"]["met"]
    assert not targets["bfloat16_dense_cosine_min"]["met"]  # 0.998 < 0.999
    assert summary["all_measured_targets_met"] is False and summary["not_measured"] == []
    share = 300_000 * 24 * 24 * 1024**2 / 800e12
    assert summary["bulk_dense_share_of_half_peak"] == round(share, 3)
    assert summary["engine_dense_share_of_half_peak"] == {"32768": round(400_000 * 24 * 24 * 1024**2 / 800e12, 3)}


def test_a_missing_part_is_not_measured_rather_than_failed():
    summary = gpu_check.summary({"parity": {"error": "exit code 1"}}, "cuda:0")
    assert summary["targets"]["bulk_dense_tokens_per_s"] == {"value": None, "target": ">= 250000", "met": None}
    assert "float32_parity_with_flagembedding" in summary["not_measured"]
    assert summary["all_measured_targets_met"] is True  # nothing measured failed


def test_the_file_is_named_by_date_gpu_and_parts():
    every = [part.name for part in gpu_check.PARTS]
    report = {"device": "cuda:0", "quick": False, "parts_asked": every, "parts": {"env": {"gpu": "NVIDIA H200"}}}
    name = gpu_check.file_name(report)
    assert name.startswith("gpu-check-20") and name.endswith("-NVIDIA-H200.json")
    quick = {"device": "cpu", "quick": True, "parts_asked": every, "parts": {}}
    assert gpu_check.file_name(quick).endswith("-cpu-quick.json")
    rerun = {"device": "cpu", "quick": False, "parts_asked": ["env", "build", "engine"], "parts": {}}
    assert gpu_check.file_name(rerun).endswith("-cpu-some-parts.json")


def test_a_part_that_fails_or_hangs_becomes_an_error_entry():
    ok = gpu_check.run_json([sys.executable, "-c", "print('noise'); print('{\"a\": 1}')"], 30)
    assert ok == {"a": 1}
    failed = gpu_check.run_json([sys.executable, "-c", "import sys; sys.exit('broken')"], 30)
    assert failed["error"] == "exit code 1" and "broken" in failed["stderr_tail"]
    hung = gpu_check.run_json([sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    assert hung["error"].startswith("timed out")


def test_clients_and_workers_are_sized_by_device():
    cpu = gpu_server.Plan(argparse.Namespace(device="cpu", quick=True))
    gpu = gpu_server.Plan(argparse.Namespace(device="cuda:0", quick=False))
    assert gpu.short_connections >= 64 and gpu.env == {} and gpu.window_s > cpu.window_s
    assert cpu.env == {"MAX_QUEUE_SIZE": "1000"}  # 16 clients over the CPU default of 50 would be refused
    assert gpu.web_concurrency == default_workers(len(os.sched_getaffinity(0)), 1)


def test_bulk_bodies_carry_their_tokens():
    requests = gpu_server.bodies(["a", "b", "c", "d", "e"], [3, 4, 5, 6, 7], 2, gpu_server.DENSE_ONLY)
    assert [r.weight for r in requests] == [7, 11]  # the fifth text makes no whole request
    body = orjson.loads(requests[0].data.split(b"\r\n\r\n", 1)[1])
    assert body == {"input": ["a", "b"], "return_sparse": False, "return_colbert": False}
    assert b"Authorization: Bearer " in requests[0].data


def test_the_shell_script_says_how_it_is_used():
    done = subprocess.run(["bash", "bench/gpu/check.sh"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "download" in done.stdout and "run [ARGS]" in done.stdout


def test_the_gpu_tests_part_runs_every_file_with_gpu_tests():
    gpu_mark = re.compile(r"^@pytest\.mark\.gpu$", re.MULTILINE)
    marked = {str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
              if gpu_mark.search(path.read_text(encoding="utf-8"))}
    assert marked == set(gpu_check.GPU_TESTS)


def test_the_cuda_tests_run_right_after_env_and_the_whole_check_fits_its_budget():
    assert [part.name for part in gpu_check.PARTS][:2] == ["env", "gpu_tests"]
    assert gpu_check.BUDGET_S <= 300 and gpu_check.QUICK_BUDGET_S < gpu_check.BUDGET_S
    script = (ROOT / "bench" / "gpu" / "check.sh").read_text()
    limit = int(re.search(r"^CHECK_LIMIT_S=\$\{GPU_CHECK_LIMIT_S:-(\d+)\}$", script, re.MULTILINE).group(1))
    device = int(re.search(r"^DEVICE_TIMEOUT_S=(\d+)$", script, re.MULTILINE).group(1))
    # The check ends on its own budget before its hard limit; a start, a run and a quick rerun fit in 15 minutes.
    assert gpu_check.BUDGET_S < limit < device and device + gpu_check.QUICK_BUDGET_S + 60 <= 15 * 60


def check_args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(device="cuda:0", model="tiny", quick=False, out=str(tmp_path), work=str(tmp_path / "w"),
                              budget_s=300.0, parts={part.name for part in gpu_check.PARTS})


def test_the_json_is_written_after_every_part_and_a_stopped_check_keeps_the_finished_ones(tmp_path, monkeypatch):
    written: list[set[str]] = []

    def run_part(check: gpu_check.Check, name: str, limit: float) -> dict:
        if check.path is not None:
            written.append(set(orjson.loads(check.path.read_bytes())["parts"]))
        if name == "peak":
            raise SystemExit("stopped by signal 15")  # what a timeout's SIGTERM raises
        return {"gpu": "NVIDIA H200"} if name == "env" else {"ran": name}

    monkeypatch.setattr(gpu_check.Check, "_run", run_part)
    check = gpu_check.Check(check_args(tmp_path))
    with pytest.raises(SystemExit):
        check.run()
    assert written == [{"env"}, {"env", "gpu_tests"}, {"env", "gpu_tests", "build"}]  # each on file before the next
    report = orjson.loads(check.path.read_bytes())
    assert check.path.name.endswith("-NVIDIA-H200.json")
    assert report["parts"]["build"] == {"ran": "build", "part_seconds": 0.0}
    assert report["parts"]["peak"]["error"].startswith("interrupted")
    assert "server" not in report["parts"] and report["summary"]["targets"]  # judged on what there is


def test_a_rerun_of_some_parts_runs_those_alone_in_the_checks_order(tmp_path, monkeypatch):
    ran: list[str] = []
    monkeypatch.setattr(gpu_check.Check, "_run", lambda check, name, limit: ran.append(name) or {"gpu": "NVIDIA H200"})
    args = check_args(tmp_path)
    args.parts = {"two_engines", "env", "engine"}
    report = gpu_check.Check(args).run()
    assert ran == ["env", "engine", "two_engines"]
    assert report["parts_asked"] == ran and list(report["parts"]) == ran


def test_a_refused_tmpfs_mount_leaves_the_machines_dev_shm_and_says_so(monkeypatch):
    monkeypatch.setattr(gpu_server.shutil, "disk_usage", lambda path: shutil_usage(64 * 2**20))
    monkeypatch.setattr(gpu_server.os, "geteuid", lambda: 0)
    monkeypatch.setattr(gpu_server.shutil, "which", lambda name: f"/usr/bin/{name}")
    refused = subprocess.CompletedProcess([], 32, "", "mount: /dev/shm: permission denied.")
    monkeypatch.setattr(gpu_server.subprocess, "run", lambda *a, **k: refused)
    size, why = gpu_server.own_dev_shm()
    assert size is None and "refused" in why and "permission denied" in why and "0.1 GiB" in why
    monkeypatch.setattr(gpu_server.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess([], 0, "", ""))
    assert gpu_server.own_dev_shm()[0] == gpu_server.OWN_SHM_SIZE
    monkeypatch.setattr(gpu_server.shutil, "disk_usage", lambda path: (_ for _ in ()).throw(FileNotFoundError(path)))
    size, why = gpu_server.own_dev_shm()
    assert size is None and "unread" in why


def shutil_usage(total: int) -> tuple[int, int, int]:
    return type("Usage", (tuple,), {"total": total})((total, 0, total))


def test_a_server_that_does_not_start_on_its_own_dev_shm_starts_on_the_machines(tmp_path, monkeypatch):
    started: list[str | None] = []

    class FakeServer:
        def __init__(self, model, log, shm_size=None, **env) -> None:
            self.shm_size = shm_size

        def start(self, timeout: float) -> FakeServer:
            started.append(self.shm_size)
            if self.shm_size:
                raise RuntimeError("server exited with 32:\nmount: /dev/shm: permission denied.")
            return self

    monkeypatch.setattr(gpu_server, "Server", FakeServer)
    monkeypatch.setattr(gpu_server, "own_dev_shm", lambda: ("16g", "a tmpfs of its own"))
    args = argparse.Namespace(device="cuda:0", model="m", quick=True)
    server, dev_shm = gpu_server.serve(args, gpu_server.Plan(args), tmp_path)
    assert started == ["16g", None] and server.shm_size is None
    assert dev_shm.startswith("the machine's /dev/shm") and "permission denied" in dev_shm


def test_the_script_runs_the_check_when_df_fails(tmp_path):
    """A path this machine lacks in ``df`` (or nvidia-smi and torch missing) does not end the run."""
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "a-1-py3-none-any.whl").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("df", "nvidia-smi"):
        (bin_dir / name).write_text("#!/bin/sh\necho \"$0: cannot access\" >&2\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "python-calls"
    python = bin_dir / "python-stub"
    python.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncase "$1" in -c) exit 1;; esac\nexit 0\n')
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python), "OUT": str(tmp_path / "o"),
           "GPU_CHECK_WHEELS": str(tmp_path / "wheels"), "GPU_CHECK_WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", "bench/gpu/check.sh", "run", "--quick"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "df ended with 1" in done.stdout
    ran = calls.read_text().splitlines()
    assert ran[-1].startswith("-m bench.gpu.check --out ") and ran[-1].endswith("--quick")


FLAG_WITHOUT_DATASETS = """
import json, sys
sys.modules["datasets"] = None  # as where datasets does not import (against another pyarrow, say)
from bench.gpu.parts import flag_model_class
flag_model, note = flag_model_class()
model = flag_model(sys.argv[1], use_fp16=False, devices="cpu")
out = model.encode(["hello world", "a second, longer text"], return_dense=True, return_sparse=True,
                   return_colbert_vecs=True)
print(json.dumps({"note": note, "dense": out["dense_vecs"].tolist(), "sparse": len(out["lexical_weights"]),
                  "colbert": [len(rows) for rows in out["colbert_vecs"]]}))
"""


@pytest.mark.slow
def test_flagembedding_encodes_with_datasets_stood_in_where_it_does_not_import(tiny_model):
    done = subprocess.run([sys.executable, "-c", FLAG_WITHOUT_DATASETS, str(tiny_model)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert got["note"].startswith("datasets stood in for (ModuleNotFoundError")
    dense = np.array(got["dense"])
    assert dense.shape[0] == 2 and np.allclose(np.linalg.norm(dense, axis=1), 1.0, atol=1e-5)
    assert got["sparse"] == 2 and all(rows > 0 for rows in got["colbert"])
