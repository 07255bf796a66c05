"""The README's operator sections are true: its examples run against the real server, its settings table
matches embsvc/config.py, and its metrics table matches what /metrics exposes.

Every ```python block runs, in order, in one namespace (later examples use earlier names);
every ```sh block runs with bash. Snippets that must not run use another tag (text, promql).
The server's URL and token replace the examples' ``http://localhost:8000`` and
``your_api_token_here``.
"""

from __future__ import annotations

import re
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from embsvc.config import load_settings
from embsvc.master import hooks as lifecycle
from tests.deploy.helpers import tool
from tests.e2e.conftest import TOKEN
from tests.e2e.readme import blocks, region, run_python, run_shell, section

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "embsvc" / "config.py"


def table(title: str) -> dict[str, list[str]]:
    """The first table of a section: first column (in backticks) -> the other cells."""
    rows: dict[str, list[str]] = {}
    for line in section(region("operators"), title + "\n").splitlines():
        if rows and not line.startswith("|"):
            break  # the end of the first table
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match[1]] = [cell.strip() for cell in match[2].split(" | ")]
    return rows


def test_python_examples_run(server):
    examples = blocks(region("operators"), "python")
    assert len(examples) >= 5
    namespace, printed = run_python(examples, server, "docs operators")
    assert "Dense dimension: 32" in printed  # 1024 on the real model
    assert "['dense', 'sparse']" in printed
    assert namespace["colbert"].shape[1] == 32

    # The hybrid search ranks a copy of the query first: cosine and MaxSim are at their maximum, 1.
    documents = [*namespace["documents"], "What is BGE-M3?"]
    ranking = namespace["hybrid_search"]("What is BGE-M3?", documents, namespace["get_embeddings"](documents))
    assert ranking[0][1] == "What is BGE-M3?"
    assert len(ranking) == len(documents)
    assert ranking == sorted(ranking, reverse=True)


def test_curl_examples_run(server):
    examples = blocks(region("operators"), "sh")
    assert examples
    printed = "".join(run_shell(examples, server, {"PATH": str(Path(tool("curl")).parent) + ":/usr/bin:/bin"}))
    assert '"error"' not in printed, printed
    assert printed.count('"object":"list"') == 2  # the two embedding calls
    assert '"status":"ok"' in printed and '"batching":' in printed
    assert "embsvc_engine_queue_depth{" in printed


def test_settings_table_names_every_setting_with_its_default():
    documented = table("Settings")
    read = set(re.findall(r'get\.\w+\("([A-Z_]+)"', CONFIG.read_text())) | {"API_TOKEN"}
    assert set(documented) == read
    base = {"API_TOKEN": "docs-check"}
    default = load_settings(base, env_file=None)
    not_literal = {"API_TOKEN": "required", "WEB_CONCURRENCY": "2 to 4",
                   "MAX_BATCH_TOKENS": str(lifecycle.DEFAULT_MAX_BATCH_TOKENS)}
    for name, (cell, _) in documented.items():
        # The CPU host's default, then maybe a GPU host's: "`8`; `64` with a GPU engine".
        literal = re.fullmatch(r"`([^`]*)`(?:; `[^`]*` with a GPU engine)?", cell)
        if name in not_literal:
            assert not literal and not_literal[name] in cell, (name, cell)
        else:
            assert literal, f"{name}: the default should be the variable's value, in backticks"
            # Setting a variable to its documented default changes nothing.
            assert load_settings({**base, name: literal[1]}, env_file=None) == default, name


def test_metrics_table_matches_the_metrics(server):
    requests.post(f"{server.url}/v1/embeddings", json={"input": "count me"},
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).raise_for_status()
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    exposed = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = set().union(*(s.labels.keys() for s in family.samples)) - {"le", "quantile"}
        exposed[name] = (family.type, labels)
    documented = {}
    for name, (kind, labels, _) in table("Metrics").items():
        documented[name] = (kind, set(re.findall(r"`(\w+)`", labels)))
    assert documented == exposed
