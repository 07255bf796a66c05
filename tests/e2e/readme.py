"""The parts of the documentation whose examples the end-to-end tests run.

A region is the text between ``<!-- NAME:start`` and ``<!-- NAME:end -->`` in
README.md or one of docs/*.md. A region may be split over several pages, as parts
named ``NAME/PART`` (the operator checks: the settings and metrics tables are in
docs/operators.md, the client examples in docs/clients.md); ``region(NAME)`` joins
the region NAME and all its parts, in page order (README.md, then docs/*.md by
name). Every marker name is used once across all those pages.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_START = re.compile(r"<!-- ([\w.-]+(?:/[\w.-]+)?):start")


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
