"""One request's arrays in POSIX shared memory (a file in ``/dev/shm``).

The web worker that owns the request creates the segment, writes the token ids,
and unlinks it once it has read the vectors; the engine only attaches, writes
its outputs and closes. Layout, each region 64-byte aligned::

    lengths int32[n_inputs] | ids int32[n_tokens] | dense f32[n_inputs, dim]
    | sparse f32[n_tokens] | colbert f32[n_tokens - n_inputs, dim]

Output regions exist only for the kinds the job asked for. A score job
(``Kind.SCORE``) has instead one region ``scores f32[n_inputs - 1, 5]``: a row per
document, a column per ``protocol.SCORE_MODES``. ``sparse`` holds the
weight of every token position; the web worker turns it into the id→weight map.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import math
import mmap
import os
from dataclasses import dataclass

import numpy as np

from gpu_pool.protocol import SCORE_MODES, Kind

SHM_DIR = "/dev/shm"
_ALIGN = 64
_ITEM_SIZE = 4  # int32 and float32 alike


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass(frozen=True, slots=True)
class Layout:
    n_inputs: int
    n_tokens: int
    dim: int
    kinds: Kind

    def regions(self) -> dict[str, tuple[int, tuple[int, ...], type]]:
        """Name -> (byte offset, shape, dtype) of every region present (shared: do not modify)."""
        return _regions(self)

    def size(self) -> int:
        return _size(self)


# Every request builds its layout on both sides of the pipe: computed once per shape.
@functools.lru_cache(maxsize=1024)
def _regions(layout: Layout) -> dict[str, tuple[int, tuple[int, ...], type]]:
    n_inputs, n_tokens, dim, kinds = layout.n_inputs, layout.n_tokens, layout.dim, layout.kinds
    shapes: list[tuple[str, tuple[int, ...], type]] = [
        ("lengths", (n_inputs,), np.int32),
        ("ids", (n_tokens,), np.int32),
    ]
    # A score job's vectors stay in the engine; its segment holds only the scores.
    vectors = Kind(0) if kinds & Kind.SCORE else kinds
    if vectors & Kind.DENSE:
        shapes.append(("dense", (n_inputs, dim), np.float32))
    if vectors & Kind.SPARSE:
        shapes.append(("sparse", (n_tokens,), np.float32))
    if vectors & Kind.COLBERT:
        shapes.append(("colbert", (n_tokens - n_inputs, dim), np.float32))
    if kinds & Kind.SCORE:
        shapes.append(("scores", (n_inputs - 1, len(SCORE_MODES)), np.float32))
    out, offset = {}, 0
    for name, shape, dtype in shapes:
        out[name] = (offset, shape, dtype)
        offset += _aligned(math.prod(shape) * _ITEM_SIZE)
    return out


@functools.lru_cache(maxsize=1024)
def _size(layout: Layout) -> int:
    offset, shape, _ = list(_regions(layout).values())[-1]
    return max(1, offset + math.prod(shape) * _ITEM_SIZE)


class Segment:
    """A mapped segment with numpy views on its regions."""

    def __init__(self, name: str, layout: Layout, fd: int, owner: bool) -> None:
        self.name, self.layout, self.owner = name, layout, owner
        try:
            self._map = mmap.mmap(fd, layout.size())
        finally:
            os.close(fd)
        self.arrays: dict[str, np.ndarray] = {
            key: np.ndarray(shape, dtype, buffer=self._map, offset=offset)
            for key, (offset, shape, dtype) in layout.regions().items()
        }

    @classmethod
    def create(cls, name: str, layout: Layout) -> Segment:
        fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, layout.size())
        except OSError:
            os.close(fd)
            os.unlink(_path(name))
            raise
        return cls(name, layout, fd, owner=True)

    @classmethod
    def attach(cls, name: str, layout: Layout) -> Segment:
        """Raises FileNotFoundError when the owner has already unlinked it."""
        return cls(name, layout, os.open(_path(name), os.O_RDWR), owner=False)

    def close(self) -> None:
        """Drop the mapping; the owner also removes the name."""
        self.arrays = {}
        # BufferError: a view is still alive somewhere; the mapping goes with it.
        with contextlib.suppress(BufferError):
            self._map.close()
        if self.owner:
            unlink(self.name)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(name))


def unlink_prefix(prefix: str) -> int:
    """Remove every segment whose name starts with ``prefix``; returns the count."""
    names = glob.glob(_path(glob.escape(prefix) + "*"))
    for path in names:
        unlink(os.path.basename(path))
    return len(names)
