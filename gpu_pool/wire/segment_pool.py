"""Reusing small segments: each request used to create, map, unmap and remove a
file in /dev/shm on both sides of the pipe, which cost about 55 µs idle and
140 µs among a worker's busy threads (page faults and unmaps included).

A web worker keeps the segments of finished requests (``WorkerSegments``) and
hands one to the next request whose layout fits in ``POOLED_BYTES``; larger
requests get a segment of their own, as before. The engine keeps its mappings of
such segments (``EngineMappings``), since the same names come back. A segment
whose request failed or timed out is never reused: the engine may still write
into it. Names are never reused either, so a mapping the engine keeps of a
removed segment is only memory, never another request's data.

Space: a kept segment holds the bytes reserved for the largest layout it served
(gpu_pool/wire/segment.py reserves before anything is written). When /dev/shm is
full, a worker gives back the segments it keeps and waits up to ``SPACE_WAIT_S``
for others' requests to finish before it refuses the request (``NoSpace``); a
request larger than the whole of /dev/shm is refused at once.
"""

from __future__ import annotations

import itertools
import mmap
import threading
import time
from collections import OrderedDict

from gpu_pool.wire.protocol import Kind
from gpu_pool.wire.segment import Layout, NoSpace, Segment, exists, map_file, open_existing, space

POOLED_BYTES = 1 << 20  # a segment of exactly this size is a pooled one
WORKER_KEEPS = 16  # free segments a worker keeps (pages touched stay allocated)
ENGINE_KEEPS = 64  # mappings the engine keeps, the least recently used dropped first
# A full /dev/shm frees up as requests finish (and the engine lets go of the kept
# segments a worker gave back within a second: EngineMappings.sweep).
SPACE_WAIT_S = 1.0
_SPACE_POLL_S = 0.02


def bytes_needed(requests: int, max_tokens: int, dim: int) -> int:
    """/dev/shm that ``requests`` requests of ``max_tokens`` tokens each, all three kinds, take at
    once. (Segments kept for reuse are not counted: a worker gives them back when space runs out.)"""
    return requests * Layout(1, max_tokens, dim, Kind.DENSE | Kind.SPARSE | Kind.COLBERT).size()


class WorkerSegments:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # unique to the worker: the master removes a dead worker's segments by it
        self._free: list[Segment] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def take(self, layout: Layout, wait_s: float = SPACE_WAIT_S) -> Segment:
        """A segment with ``layout``'s bytes reserved; ``NoSpace`` when /dev/shm has no room
        for it within ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._take(layout)
            except NoSpace as exc:
                if exc.never_fits() or time.monotonic() >= deadline:
                    raise
                self._give_back()
            # Trying again only once there is room: a failed reservation takes pages
            # for a moment that another request might have had.
            while space().free < layout.size() and time.monotonic() < deadline:
                time.sleep(_SPACE_POLL_S)

    def _take(self, layout: Layout) -> Segment:
        if layout.size() > POOLED_BYTES:
            return Segment.create(self._new_name(), layout)
        with self._lock:
            segment = self._free.pop() if self._free else None
        if segment is None:
            segment = Segment.create(self._new_name(), layout, POOLED_BYTES)
        else:
            try:
                segment.reserve(layout.size())
            except NoSpace:
                segment.discard()
                raise
            segment.use(layout)
        segment.on_close = self._keep
        return segment

    def _give_back(self) -> None:
        """Remove the segments kept for reuse, so that their space serves this request."""
        with self._lock:
            free, self._free = self._free, []
        for segment in free:
            segment.discard()

    def _keep(self, segment: Segment) -> bool:
        with self._lock:
            if len(self._free) < WORKER_KEEPS:
                self._free.append(segment)
                return True
        return False

    def _new_name(self) -> str:
        return f"{self.prefix}{next(self._seq)}"


class EngineMappings:
    """Used by the engine's reader thread only."""

    def __init__(self) -> None:
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._swept = time.monotonic()

    def attach(self, name: str, layout: Layout) -> Segment:
        """Raises FileNotFoundError when the worker has already removed it."""
        mapping = self._maps.get(name)
        if mapping is not None:
            self._maps.move_to_end(name)
        else:
            mapping = map_file(open_existing(name))
            if len(mapping) != POOLED_BYTES:
                return Segment(name, layout, mapping, owner=False)
            self._maps[name] = mapping
            if len(self._maps) > ENGINE_KEEPS:
                # Views of a job still running keep the mapping alive until they go.
                self._maps.popitem(last=False)
        return Segment(name, layout, mapping, owner=False, on_close=_kept)

    def sweep(self, every_s: float = 1.0) -> None:
        """Drop the mappings of segments their worker has removed (a failed request's, a
        dead worker's), so that their memory is freed; at most once every ``every_s``."""
        if time.monotonic() - self._swept < every_s:
            return
        self._swept = time.monotonic()
        for name in [n for n in self._maps if not exists(n)]:
            del self._maps[name]  # a running job's views keep it mapped until they go


def _kept(segment: Segment) -> bool:
    return True
