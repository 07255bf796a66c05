"""The README's Beyond embeddings section is true: its python and sh examples run against the real server.

Every ```python block runs, in order, in one namespace (later examples use earlier names);
every ```sh block runs with bash. ```py blocks are shown, not run. The server's URL and token
replace the examples' ``http://localhost:8000`` and ``your_api_token_here``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess

import pytest

from tests.e2e.conftest import TOKEN
from tests.e2e.readme import region

BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [code for tag, code in BLOCK.findall(region("beyond")) if tag == lang]


def for_server(code: str, server) -> str:
    return code.replace("http://localhost:8000", server.url).replace("your_api_token_here", TOKEN)


def test_python_examples_run(server):
    namespace: dict = {}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        for number, code in enumerate(blocks("python")):
            try:
                exec(compile(for_server(code, server), f"README beyond python block {number}", "exec"), namespace)
            except Exception as exc:  # noqa: BLE001 - name the failing block
                pytest.fail(f"python block {number} failed: {exc!r}\n{code}")
    printed = output.getvalue()
    assert len(namespace["scores"]["data"]) == len(namespace["documents"]) == 3
    assert len(namespace["best"]) == 2 and len(namespace["reranked"].results) == 2
    assert namespace["item"]["colbert_embedding"] and namespace["colbert"].shape[1] == 32
    assert "(32,)" in printed and "chunks" in printed
    pieces, limit = namespace["pieces"], 64
    assert len(pieces) > 1 and " ".join(pieces) == " ".join(namespace["sentences"])
    counts = namespace["requests"].post(f"{server.url}/tokenize", headers=namespace["HEADERS"], timeout=60,
                                        json={"input": pieces}).json()["data"]
    assert all(item["untruncated_count"] <= limit for item in counts)


def test_sh_examples_run(server):
    examples = blocks("sh")
    assert len(examples) == 3
    answers = []
    for code in examples:
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", for_server(code, server)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (code, done.stderr)
        answers.append(json.loads(done.stdout))
    score, rerank, tokenize = answers
    assert [item["index"] for item in score["data"]] == [0, 1]
    assert len(rerank["results"]) == 1 and "text" in rerank["results"][0]["document"]
    assert [item["tokens"][0] for item in tokenize["data"]] == ["<s>", "<s>"]
