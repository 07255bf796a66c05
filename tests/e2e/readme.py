"""The parts of the documentation whose examples the end-to-end tests run.

A region is the text between ``<!-- NAME:start`` and ``<!-- NAME:end -->`` in
README.md or one of docs/*.md. A region may be split over several pages, as parts
named ``NAME/PART`` (the operator checks: the settings and metrics tables are in
docs/operators.md, the client examples in docs/clients.md); ``region(NAME)`` joins
the region NAME and all its parts, in page order (README.md, then docs/*.md by
name). Every marker name is used once across all those pages.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from testkit.server import Server
from tests.e2e.conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]
_START = re.compile(r"<!-- ([\w.-]+(?:/[\w.-]+)?):start")
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def pages() -> list[Path]:
    """The pages searched for regions: README.md, then docs/*.md by name."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def regions() -> dict[str, tuple[Path, str]]:
    """Every marked region and part: name -> (page, text from its start marker up to its end marker)."""
    found: dict[str, tuple[Path, str]] = {}
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for match in _START.finditer(text):
            name = match[1]
            assert name not in found, f"region {name!r} is marked twice: in {found[name][0]} and in {page}"
            end = text.find(f"<!-- {name}:end -->", match.end())
            assert end != -1, f"region {name!r} in {page} has no <!-- {name}:end --> marker"
            found[name] = (page, text[match.start() : end])
    return found


def region(name: str) -> str:
    """The region ``name`` with its parts ``name/…``, joined in page order."""
    parts = [text for key, (_, text) in regions().items() if key == name or key.startswith(f"{name}/")]
    assert parts, f"no region {name!r} in README.md or docs/*.md"
    return "".join(parts)


def section(text: str, title: str) -> str:
    """The ``## title`` section of ``text`` (a region), up to the next ``## ``."""
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def blocks(text: str, lang: str) -> list[str]:
    """The fenced code blocks of ``lang`` in ``text``, in order."""
    return [code for tag, code in _BLOCK.findall(text) if tag == lang]


def for_server(code: str, server: Server) -> str:
    """An example as written for localhost:8000 and the placeholder token, aimed at ``server``."""
    return code.replace("http://localhost:8000", server.url).replace("your_api_token_here", TOKEN)


def run_python(examples: list[str], server: Server, where: str) -> tuple[dict[str, Any], str]:
    """Run the blocks in turn in one namespace, as a reader would; the namespace and what they printed."""
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for number, code in enumerate(examples):
            try:
                exec(compile(for_server(code, server), f"{where} python block {number}", "exec"), namespace)
            except Exception as exc:  # noqa: BLE001 - name the failing block
                pytest.fail(f"{where}: python block {number} failed: {exc!r}\n{code}")
    return namespace, printed.getvalue()


def run_shell(examples: list[str], server: Server, env: dict[str, str] | None = None) -> list[str]:
    """Run each block with bash -e -o pipefail; what each printed (every one must succeed)."""
    printed = []
    for code in examples:
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", for_server(code, server)], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (code, done.stderr)
        printed.append(done.stdout)
    return printed
