"""Shared by the deployment checks: paths, tools, the settings table of docs/api.md."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from testkit import scripts

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
API_MD = ROOT / "docs" / "api.md"
INSTALL_HINT = "run deploy/install-tools.sh as root (CI runs it before the tests)"


def tool(name: str) -> str:
    """Path of a command-line tool: the venv's bin first, then PATH; fail if absent.

    A missing tool fails the test instead of skipping it, so that CI never
    passes without the check.
    """
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file():
        return str(venv_bin)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return found


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload]


def api_settings() -> list[str]:
    """Every variable named in the first column of api.md's configuration table."""
    if not API_MD.is_file():
        pytest.fail(f"{API_MD} not found: the checks read the settings table from docs/api.md")
    text = API_MD.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)
    assert len(section) == 2, "api.md has no '## Configuration' section"
    names: list[str] = []
    for line in section[1].splitlines():
        if line.startswith("## "):
            break
        cells = line.split("|")
        if len(cells) > 2:
            names += [n for n in re.findall(r"`([^`]+)`", cells[1]) if re.fullmatch(r"[A-Z][A-Z0-9_]*", n)]
    assert len(names) >= 10, f"too few settings found in api.md's table: {names}"
    return names


def api_default(name: str) -> str:
    """The default column of one row of api.md's configuration table."""
    for line in API_MD.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1] == f"`{name}`":
            return cells[2]
    raise AssertionError(f"{name} is not in api.md's configuration table")


def load_render() -> ModuleType:
    return scripts.load("nginx/render.py")


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "ki": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mi": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gi": 1 << 30}


def size_bytes(value: str | int) -> int:
    """A size as compose ("2gb", "512m") or Kubernetes ("2Gi") writes it, in bytes."""
    match = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", str(value).strip())
    assert match and match[2].lower() in _UNITS, f"not a size: {value!r}"
    return int(match[1]) * _UNITS[match[2].lower()]


def shm_needed() -> int:
    """/dev/shm that a full queue (the CPU default of MAX_QUEUE_SIZE) of the longest requests with all
    three kinds takes on bge-m3 (1024 floats a vector): what the server's start-up check compares with."""
    from gpu_pool import shared_memory_needed

    queue = int(re.match(r"\d+", api_default("MAX_QUEUE_SIZE"))[0])  # type: ignore[index]
    return shared_memory_needed(queue, int(api_default("MAX_TOKENS")), 1024)
