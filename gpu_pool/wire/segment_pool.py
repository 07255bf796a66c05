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
"""

from __future__ import annotations

import itertools
import mmap
import threading
import time
from collections import OrderedDict

from gpu_pool.wire.segment import Layout, Segment, exists, map_file, open_existing

POOLED_BYTES = 1 << 20  # a segment of exactly this size is a pooled one
WORKER_KEEPS = 16  # free segments a worker keeps (pages touched stay allocated)
ENGINE_KEEPS = 64  # mappings the engine keeps, the least recently used dropped first


class WorkerSegments:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # unique to the worker: the master removes a dead worker's segments by it
        self._free: list[Segment] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def take(self, layout: Layout) -> Segment:
        if layout.size() > POOLED_BYTES:
            return Segment.create(self._new_name(), layout)
        with self._lock:
            segment = self._free.pop() if self._free else None
        if segment is None:
            segment = Segment.create(self._new_name(), layout, POOLED_BYTES)
        else:
            segment.use(layout)
        segment.on_close = self._keep
        return segment

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
