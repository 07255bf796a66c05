"""Builds the kernels (attention.c, products.c) into one shared library beside them, named by
the sources' hash so that a changed source is never served by an old build. Standard library
only, so that the image's build stage runs it before anything is installed (``python
gpu_pool/model/native/compiler.py``); the engine calls ``build`` itself when the library is
missing (``gpu_pool.model.native``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

FOLDER = Path(__file__).parent
SOURCES = (FOLDER / "attention.c", FOLDER / "products.c", FOLDER / "norm.c")
HEADERS = (FOLDER / "simd.h",)
# The instructions the kernels are written in; the engine calls them only on a CPU that has them all.
ISA_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx512vnni", "-mfma")
# -fopenmp links libgomp.so.1: in the engine that is torch's own, already loaded, so the kernel
# runs on torch's threads.
CFLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp", "-Wall", "-Wextra", "-Werror", *ISA_FLAGS)


def library_path(folder: Path | None = None) -> Path:
    text = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS)) + " ".join(CFLAGS).encode()
    return (folder or FOLDER) / f"kernels-{hashlib.sha256(text).hexdigest()[:16]}.so"


def find_compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def build(target: Path | None = None, extra: Sequence[str] = ()) -> Path:
    """Compile to ``target`` (default: ``library_path()``), written whole or not at all, so that
    engines starting at once never load half a file; ``extra``: more flags (the tests' sanitizer).
    Raises RuntimeError saying why it could not."""
    target = target or library_path()
    cc = find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or $CC) on PATH")
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        done = subprocess.run([cc, *CFLAGS, *extra, "-o", str(partial), *map(str, SOURCES)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        os.replace(partial, target)
    return target


def main() -> int:
    path = library_path()
    if path.exists():
        print(f"{path} is up to date")
        return 0
    try:
        build(path)
    except (RuntimeError, OSError) as exc:
        print(f"kernels not built ({exc}); the engine will use torch's attention and products", file=sys.stderr)
        return 1
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
