"""The README's parts whose examples the end-to-end tests run: text between
``<!-- NAME:start`` and ``<!-- NAME:end -->`` markers."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def region(name: str) -> str:
    text = README.read_text()
    start = text.index(f"<!-- {name}:start")
    return text[start : text.index(f"<!-- {name}:end -->", start)]
