"""Schemathesis against the server's own /openapi.json: every operation, valid and
invalid data, every check (no 5xx, statuses, headers, content types and bodies as
the document says, authentication enforced).

The default run sends over 1,000 requests in well under a minute. More:
``FUZZ_EXAMPLES=1000 FUZZ_SEED=random .venv/bin/python -m pytest tests/e2e/test_fuzz.py``
(examples per operation and phase; README: Reliability).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from testkit.server import Server
from tests.e2e.conftest import TOKEN

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
SEED = os.environ.get("FUZZ_SEED", "20261124")
MIN_REQUESTS = 1000
METHODS = ("get", "post", "put", "delete", "patch")
# text-embeddings-inference's API (docs/api.md), which the document must carry and the run cover.
TEI_PATHS = {"/embed", "/embed_sparse", "/embed_all", "/rerank", "/decode", "/info", "/tokenize", "/"}


def received(server: Server) -> int:
    """The server's access records (INFO, so also at the shared server's DEBUG): what it really received."""
    return len(re.findall(r'gunicorn\.access.*"[A-Z]+ /', server.log()))


@pytest.mark.slow
def test_schemathesis_finds_nothing(server, tmp_path):
    seed = str(random.randrange(2**31)) if SEED == "random" else SEED
    report = tmp_path / "schemathesis.json"
    before, before_unexpected = received(server), server.log().count("Unexpected error")
    run = subprocess.run(
        [str(SCHEMATHESIS), "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json", "--checks", "all",
         "--header", f"Authorization: Bearer {TOKEN}", "--max-examples", str(EXAMPLES), "--seed", seed,
         "--workers", "2", "--request-timeout", "60", "--report", "json", "--report-json-path", str(report)],
        capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    summary = run.stdout[-20000:]
    assert run.returncode == 0, f"schemathesis (seed {seed}) failed:\n{summary}"
    result = json.loads(report.read_text())
    assert result["operations"]["tested"] == result["operations"]["total"] >= 8, result["operations"]
    paths = requests.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    assert set(paths) >= TEI_PATHS and "post" in paths["/"]
    # Every operation of the document but GET /openapi.json, which schemathesis leaves out (it reads it).
    operations = sum(method in METHODS for path, item in paths.items() for method in item if path != "/openapi.json")
    assert result["operations"]["total"] == operations, result["operations"]
    assert result["test_cases"]["with_failures"] == 0 and result["test_cases"]["errored"] == 0
    assert result["test_cases"]["generated"] >= MIN_REQUESTS, result["test_cases"]
    assert received(server) - before >= MIN_REQUESTS
    unexpected = server.log().count("Unexpected error")
    assert unexpected == before_unexpected, "the fuzzer made the server fail unexpectedly"
