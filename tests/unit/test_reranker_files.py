"""The cross-encoder's folder at start: downloaded from a Hub stand-in on loopback when it holds no
config.json (as bge-m3's is), refused when it is not a one-label sequence classifier, and handed to
the engines; RERANKER_PATH=none serves bge-m3 alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embsvc.config import load_settings
from embsvc.master import hooks
from embsvc.master.model_files import ModelFilesError, ensure_reranker
from testkit.fake_hub import FakeHub

ROOT = Path(__file__).resolve().parents[2]

# A fresh interpreter, as the server's master is: huggingface_hub reads HF_ENDPOINT once, when imported.
DOWNLOAD = """
import sys
from pathlib import Path
from runtime import logs
from embsvc.master.model_files import ensure_reranker
logs.configure("INFO", "json")
ensure_reranker(Path(sys.argv[1]), "BAAI/bge-reranker-v2-m3")
"""


def test_an_empty_folder_gets_the_cross_encoder_downloaded(tiny_reranker, tmp_path):
    target = tmp_path / "reranker"
    with FakeHub(tiny_reranker, "BAAI/bge-reranker-v2-m3") as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        done = subprocess.run([sys.executable, "-c", DOWNLOAD, str(target)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert {name: (target / name).read_bytes() for name in hub.files} == hub.files
    messages = [json.loads(line)["message"] for line in done.stderr.splitlines()]
    assert messages[0].startswith("Downloading BAAI/bge-reranker-v2-m3 from the Hugging Face Hub into")
    assert messages[-1].startswith("Downloaded BAAI/bge-reranker-v2-m3 into")
    assert any(request.startswith("GET /BAAI/bge-reranker-v2-m3/resolve/") for request in hub.requests)


def test_a_complete_folder_is_not_downloaded_again(tiny_reranker):
    assert ensure_reranker(tiny_reranker, "BAAI/bge-reranker-v2-m3") == tiny_reranker  # no hub here: no request


@pytest.mark.parametrize("change", [
    {"architectures": ["XLMRobertaModel"]},  # bge-m3's own layout
    {"id2label": {"0": "no", "1": "yes"}},  # two labels: not one score per pair
])
def test_another_layout_is_refused_with_the_way_out(tiny_reranker, tmp_path, change):
    folder = tmp_path / "wrong"
    shutil.copytree(tiny_reranker, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ModelFilesError, match="RERANKER_PATH=none"):
        ensure_reranker(folder, "BAAI/bge-reranker-v2-m3")


def test_the_engines_are_given_the_folder_or_none(tiny_model, tiny_reranker):
    base = {"API_TOKEN": "t", "MODEL_PATH": str(tiny_model)}
    served = load_settings({**base, "RERANKER_PATH": str(tiny_reranker)}, env_file=None)
    assert hooks._engine_template(served).reranker_path == str(tiny_reranker.resolve())
    alone = load_settings({**base, "RERANKER_PATH": "none"}, env_file=None)
    assert alone.reranker_path is None and hooks._engine_template(alone).reranker_path == ""
    assert alone.served_models() == ("BAAI/bge-m3",)
    default = load_settings(base, env_file=None)
    assert default.reranker_path == Path("bge-reranker-v2-m3")  # beside ./BGE-M3, MODEL_PATH's default
    assert default.served_models() == ("BAAI/bge-m3", "BAAI/bge-reranker-v2-m3")
