"""One request's arrays in POSIX shared memory (a file in ``/dev/shm``).

The web worker that owns the request creates the segment, writes the token ids,
and unlinks it once it has read the vectors (or keeps a small one for its next
request: gpu_pool/wire/segment_pool.py); the engine only attaches, writes its outputs
and closes. Layout, each region 64-byte aligned::

    lengths int32[n_inputs] | ids int32[n_tokens] | times f64[2] | dense f32[n_inputs, dim]
    | sparse f32[n_tokens] | colbert f32[n_tokens - n_inputs, dim]

``times``: the engine's seconds for the job, written before it answers: from its arrival to
its first pass (``queue``), and from then to its answer (``passes``).

Output regions exist only for the kinds the job asked for; dense and colbert are float16
when it asked for ``Kind.HALF``. A score job
(``Kind.SCORE``) has instead one region ``scores f32[n_inputs - 1, 5]``: a row per
document, a column per ``protocol.SCORE_MODES``. A rerank job (``Kind.RERANK``: each input a
(query, passage) pair) has one region ``logits f32[n_inputs]``, the cross-encoder's raw
score of each pair. ``sparse`` holds the
weight of every token position; the web worker turns it into the id→weight map.

Space: /dev/shm is a tmpfs, and a tmpfs hands out a page only when it is first
touched; a write to a page it cannot back then kills the process with SIGBUS (a
4 MiB /dev/shm killed every worker and the engine). So the owner reserves the bytes
a request's layout uses (``posix_fallocate``) before any process touches them, and
a full /dev/shm becomes ``NoSpace``, raised in the web worker, never a signal.
"""

from __future__ import annotations

import contextlib
import errno
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
# A full tmpfs says ENOSPC (its size, or its inodes); a memory cgroup at its limit, ENOMEM.
_FULL = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EDQUOT})
_MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Space:
    """The shared-memory file system, in bytes."""

    path: str
    size: int
    used: int
    free: int


def space() -> Space:
    st = os.statvfs(SHM_DIR)
    return Space(SHM_DIR, st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize,
                 st.f_bavail * st.f_frsize)


def held(prefix: str) -> int:
    """Bytes of /dev/shm that the segments named ``prefix``... hold (what was reserved or written)."""
    total = 0
    for path in glob.glob(_path(glob.escape(prefix) + "*")):
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile
            total += os.stat(path).st_blocks * 512
    return total


class NoSpace(Exception):
    """/dev/shm cannot back a segment of ``needed`` bytes now (``space``: what it had)."""

    def __init__(self, needed: int, now: Space) -> None:
        self.needed, self.space = needed, now
        if needed > now.size:
            what = f"which holds only {now.size / _MIB:.1f} MiB in all"
        else:
            what = f"which has {now.free / _MIB:.1f} MiB free of {now.size / _MIB:.1f} MiB"
        super().__init__(f"shared memory is full: this request needs {needed / _MIB:.1f} MiB of {now.path}, {what}")

    def never_fits(self) -> bool:
        return self.needed > self.space.size


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
        ("times", (2,), np.float64),
    ]
    # A score job's vectors stay in the engine; its segment holds only the scores. A rerank job
    # has no vectors at all, one logit per pair.
    vectors = Kind(0) if kinds & (Kind.SCORE | Kind.RERANK) else kinds
    vector_type = np.float16 if kinds & Kind.HALF else np.float32
    if vectors & Kind.DENSE:
        shapes.append(("dense", (n_inputs, dim), vector_type))
    if vectors & Kind.SPARSE:
        shapes.append(("sparse", (n_tokens,), np.float32))
    if vectors & Kind.COLBERT:
        shapes.append(("colbert", (total_colbert_rows(n_inputs, n_tokens), dim), vector_type))
    if kinds & Kind.SCORE:
        shapes.append(("scores", (n_inputs - 1, len(SCORE_MODES)), np.float32))
    if kinds & Kind.RERANK:
        shapes.append(("logits", (n_inputs,), np.float32))
    out, offset = {}, 0
    for name, shape, dtype in shapes:
        out[name] = (offset, shape, dtype)
        offset += _aligned(_bytes(shape, dtype))
    return out


@functools.lru_cache(maxsize=1024)
def _size(layout: Layout) -> int:
    offset, shape, dtype = list(_regions(layout).values())[-1]
    return max(1, offset + _bytes(shape, dtype))


def _bytes(shape: tuple[int, ...], dtype: type) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


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
        self.reserved = 0  # leading bytes backed by memory (the owner's concern only)
        self.use(layout)

    @classmethod
    def create(cls, name: str, layout: Layout, size: int = 0) -> Segment:
        """A new segment of ``size`` bytes, or of the layout's size if that is larger; the
        layout's bytes are reserved (``NoSpace`` when /dev/shm cannot back them)."""
        try:
            fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as exc:
            raise _no_space(exc, layout.size()) from None
        try:
            os.ftruncate(fd, max(size, layout.size()))
            _reserve(fd, layout.size())
            mapping = map_file(fd)  # closes fd
        except (OSError, NoSpace):
            with contextlib.suppress(OSError):
                os.close(fd)
            unlink(name)
            raise
        segment = cls(name, layout, mapping, owner=True)
        segment.reserved = layout.size()
        return segment

    def reserve(self, nbytes: int) -> None:
        """Back the first ``nbytes`` with memory before they are written (a kept segment
        taking a larger layout); ``NoSpace`` when /dev/shm cannot."""
        if nbytes <= self.reserved:
            return
        fd = open_existing(self.name)
        try:
            _reserve(fd, nbytes)
        finally:
            os.close(fd)
        self.reserved = nbytes

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


def _reserve(fd: int, nbytes: int) -> None:
    # On tmpfs this allocates the pages now, or fails and gives back what it took.
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        raise _no_space(exc, nbytes) from None


def _no_space(exc: OSError, nbytes: int) -> Exception:
    """``NoSpace`` for a full file system; any other OSError as it is."""
    return NoSpace(nbytes, space()) if exc.errno in _FULL else exc


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
