"""The model download logs its progress as log lines, from a Hub stand-in on loopback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from embsvc.master.download_progress import LoggedProgress
from testkit.fake_hub import FakeHub

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter, as the server's master is: huggingface_hub reads HF_ENDPOINT once, when imported.
DOWNLOAD = """
import sys
from pathlib import Path
from runtime import logs
from embsvc.master.model_files import ensure_model
logs.configure("INFO", "json")
ensure_model(Path(sys.argv[1]), "BAAI/bge-m3")
"""


def test_download_progress_is_logged_to_the_end(tiny_model, tmp_path):
    target = tmp_path / "model"
    with FakeHub(tiny_model, "BAAI/bge-m3") as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # what LOG_FORMAT=json sets: these lines stay
        done = subprocess.run([sys.executable, "-c", DOWNLOAD, str(target)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert {name: (target / name).read_bytes() for name in hub.files} == hub.files

    entries = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    messages = [e["message"] for e in entries]
    assert messages[0].startswith("Downloading BAAI/bge-m3 from the Hugging Face Hub into")
    assert messages[-1].startswith("Downloaded BAAI/bge-m3 into")
    progress = [e for e in entries if e.get("event") == "download_progress"]
    total_bytes = sum(len(data) for data in hub.files.values())
    # The bytes bar's total grows as parallel downloads start: only its last line is final.
    bytes_lines = [e for e in progress if e["unit"] == "B"]
    assert bytes_lines[-1]["done"] == bytes_lines[-1]["total"] == total_bytes
    files = [e for e in progress if e["unit"] == "it"]
    assert files[-1]["done"] == files[-1]["total"] == len(hub.files)
    assert all(e["logger"] == "gpu_pool.download" for e in progress)


def test_progress_lines_are_throttled(caplog):
    now = [0.0]

    class Clocked(LoggedProgress):
        clock = staticmethod(lambda: now[0])

    caplog.set_level(logging.INFO, logger="gpu_pool.download")
    # mininterval=0: tqdm draws on every update, so only our throttle decides.
    with Clocked(total=100_000_000, unit="B", unit_scale=True, desc="Downloading bytes", mininterval=0) as bar:
        for _ in range(100):
            now[0] += 1  # one second per megabyte
            bar.update(1_000_000)
    lines = [r for r in caplog.records if r.name == "gpu_pool.download"]
    # The first step, then one line per 10 s, then the end.
    assert [r.done for r in lines] == [m * 1_000_000 for m in (1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100)]
    assert lines[-1].getMessage().startswith("Downloading bytes: 100MB of 100MB (100%), ")
    assert lines[1].getMessage().startswith("Downloading bytes: 11.0MB of 100MB (11%), ")


def test_a_bar_that_never_moved_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="gpu_pool.download")
    with LoggedProgress(total=0, unit="B", desc="Downloading bytes"):
        pass
    assert not [r for r in caplog.records if r.name == "gpu_pool.download"]
