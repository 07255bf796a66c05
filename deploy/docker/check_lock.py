"""Check requirements.lock against requirements.txt: every pin there is locked at its version, and
every locked package carries at least one sha256 hash (pip --require-hashes needs them all).

The image's build runs it before installing, so that a lock left behind by a change to
requirements.txt stops the build instead of shipping other versions; `make lock` runs it after
writing the lock. A local version label in the lock (torch 2.13.0+cpu from the CPU wheel index)
matches the pin without it.

    python deploy/docker/check_lock.py requirements.txt requirements.lock
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}\b")


def normalise(name: str) -> str:
    """A project name as the package index compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file (comments and options skipped)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[normalise(match["name"])] = match["version"]
    return found


def locked(text: str) -> dict[str, tuple[str, int]]:
    """Each entry of a hashed lock (``name==version \\`` and its indented hash lines): its version and hash count."""
    entries: dict[str, tuple[str, int]] = {}
    current = ""
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            current = normalise(match["name"])
            entries[current] = (match["version"], len(_HASH.findall(line)))
        elif current and line[:1].isspace():
            version, hashes = entries[current]
            entries[current] = (version, hashes + len(_HASH.findall(line)))
        elif line.strip() and not line.startswith("#"):
            current = ""
    return entries


def problems(requirements: str, lock: str) -> list[str]:
    """What makes ``lock`` unfit for ``requirements``; empty when it fits."""
    entries = locked(lock)
    found: list[str] = []
    for name, version in sorted(pins(requirements).items()):
        if name not in entries:
            found.append(f"{name}=={version} is not in the lock")
        elif entries[name][0].split("+", 1)[0] != version:
            found.append(f"{name}=={version} is locked at {entries[name][0]}")
    found += [f"{name} has no sha256 hash" for name, (_, hashes) in sorted(entries.items()) if hashes == 0]
    if not entries:
        found.append("the lock names no package")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    requirements, lock = (Path(a) for a in argv)
    found = problems(requirements.read_text(encoding="utf-8"), lock.read_text(encoding="utf-8"))
    for problem in found:
        print(f"{lock}: {problem}", file=sys.stderr)
    if found:
        print(f"{lock} does not match {requirements}: run `make lock`", file=sys.stderr)
        return 1
    print(f"{lock}: {len(locked(lock.read_text(encoding='utf-8')))} packages, each with its hashes, "
          f"every pin of {requirements} at its version")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
