"""The README's Beyond embeddings section is true: its python and sh examples run against the real server.

Every ```python block runs, in order, in one namespace (later examples use earlier names);
every ```sh block runs with bash. ```py blocks are shown, not run. The server's URL and token
replace the examples' ``http://localhost:8000`` and ``your_api_token_here``.
"""

from __future__ import annotations

import json

from tests.e2e.readme import blocks, region, run_python, run_shell


def test_python_examples_run(server):
    namespace, printed = run_python(blocks(region("beyond"), "python"), server, "docs/scoring.md")
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
    examples = blocks(region("beyond"), "sh")
    assert len(examples) == 3
    score, rerank, tokenize = [json.loads(printed) for printed in run_shell(examples, server)]
    assert [item["index"] for item in score["data"]] == [0, 1]
    assert len(rerank["results"]) == 1 and "text" in rerank["results"][0]["document"]
    assert [item["tokens"][0] for item in tokenize["data"]] == ["<s>", "<s>"]
