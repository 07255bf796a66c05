"""The server refuses to start on bad settings or an incomplete model folder, clearly and non-zero."""

from __future__ import annotations

import shutil

import pytest

from testkit.server import Server, free_port


def run_to_exit(server: Server, timeout: float = 60.0) -> tuple[int, str]:
    server.start(wait=False)
    server.process.wait(timeout)
    return server.stop(), server.log()


@pytest.mark.parametrize("token", ["", "your_api_token_here"])
def test_refuses_without_a_real_token(tiny_model, tmp_path, token):
    code, log = run_to_exit(Server(tiny_model, tmp_path / "log", API_TOKEN=token))
    assert code != 0
    assert "API_TOKEN" in log


@pytest.mark.parametrize("missing", ["sparse_linear.pt", "colbert_linear.pt"])
def test_refuses_without_a_head(tiny_model, tmp_path, missing):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / missing).unlink()
    code, log = run_to_exit(Server(model, tmp_path / "log", API_TOKEN="t"))
    assert code != 0
    assert missing in log


def test_failed_download_is_a_clear_error(tmp_path):
    # An empty folder makes the server download MODEL_NAME; the hub here is a closed local port.
    env = {"API_TOKEN": "t", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_DOWNLOAD_TIMEOUT": "2",
           "HF_HUB_ETAG_TIMEOUT": "2"}
    code, log = run_to_exit(Server(tmp_path / "empty-model", tmp_path / "log", **env), timeout=120)
    assert code != 0
    assert "could not download BAAI/bge-m3" in log
