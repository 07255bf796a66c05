"""One request's arrays in POSIX shared memory (a file in ``/dev/shm``).

The web worker that owns the request creates the segment, writes the token ids,
and unlinks it once it has read the vectors (or keeps a small one for its next
request: gpu_pool/wire/segment_pool.py); the engine only attaches, writes its outputs
and closes. Layout, each region 64-byte aligned::

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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gpu_pool.wire.packing import total_colbert_rows
from gpu_pool.wire.protocol import SCORE_MODES, Kind

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
        shapes.append(("colbert", (total_colbert_rows(n_inputs, n_tokens), dim), np.float32))
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
    """A mapped segment with numpy views on its regions.

    ``on_close``, when set, is asked first by ``close``: returning True means it
    keeps the segment for another request (gpu_pool/wire/segment_pool.py), so the
    mapping and the name stay.
    """

    def __init__(self, name: str, layout: Layout, mapping: mmap.mmap, owner: bool,
                 on_close: Callable[[Segment], bool] | None = None) -> None:
        self.name, self.owner, self.on_close = name, owner, on_close
        self._map = mapping
        self.use(layout)

    @classmethod
    def create(cls, name: str, layout: Layout, size: int = 0) -> Segment:
        """A new segment of ``size`` bytes, or of the layout's size if that is larger."""
        fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, max(size, layout.size()))
            mapping = map_file(fd)  # closes fd
        except OSError:
            with contextlib.suppress(OSError):
                os.close(fd)
            unlink(name)
            raise
        return cls(name, layout, mapping, owner=True)

    @classmethod
    def attach(cls, name: str, layout: Layout) -> Segment:
        """Raises FileNotFoundError when the owner has already unlinked it."""
        return cls(name, layout, map_file(open_existing(name)), owner=False)

    def use(self, layout: Layout) -> None:
        """Point the views at ``layout``'s regions (a kept segment serves requests of any layout that fits)."""
        self.layout = layout
        self.arrays: dict[str, np.ndarray] = {
            key: np.ndarray(shape, dtype, buffer=self._map, offset=offset)
            for key, (offset, shape, dtype) in layout.regions().items()
        }

    def close(self) -> None:
        """Drop the views, then the mapping unless ``on_close`` keeps it; the owner also removes the name."""
        self.arrays = {}
        if self.on_close is not None and self.on_close(self):
            return
        # BufferError: a view is still alive somewhere; the mapping goes with it.
        with contextlib.suppress(BufferError):
            self._map.close()
        if self.owner:
            unlink(self.name)

    def discard(self) -> None:
        """Close for good, even if it would have been kept: the engine may still write into it."""
        self.on_close = None
        self.close()

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(_path(name))


def open_existing(name: str) -> int:
    """A descriptor of an existing segment; FileNotFoundError when it is gone."""
    return os.open(_path(name), os.O_RDWR)


def map_file(fd: int) -> mmap.mmap:
    """The whole file, mapped; the descriptor is closed either way."""
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(name))


def unlink_prefix(prefix: str) -> int:
    """Remove every segment whose name starts with ``prefix``; returns the count."""
    names = glob.glob(_path(glob.escape(prefix) + "*"))
    for path in names:
        unlink(os.path.basename(path))
    return len(names)
