"""Reading many pipe messages per system call.

Writers use ``Connection.send_bytes``: a 4-byte big-endian length, then the
payload, in one ``write``. A pipe's single reader can take whatever is there
with one ``read`` and split it into frames, instead of two reads per message;
under load this halves the engine's and the listeners' system calls.
"""

from __future__ import annotations

import os
import select
import struct
from multiprocessing.connection import Connection

_HEADER = struct.Struct("!i")
_CHUNK = 1 << 16


class FrameReader:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn  # keeps the descriptor open
        self._fd = conn.fileno()
        self._buffer = bytearray()
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)

    def read(self, timeout_s: float) -> list[bytes]:
        """The whole frames available within ``timeout_s``; raises EOFError when every writer is gone."""
        if not self._has_frame() and self._poller.poll(int(timeout_s * 1000)):
            chunk = os.read(self._fd, _CHUNK)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        return self._split()

    def _has_frame(self) -> bool:
        if len(self._buffer) < _HEADER.size:
            return False
        size: int
        (size,) = _HEADER.unpack_from(self._buffer)
        return len(self._buffer) >= _HEADER.size + size

    def _split(self) -> list[bytes]:
        frames, offset, buffer = [], 0, self._buffer
        while len(buffer) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, offset)
            end = offset + _HEADER.size + size
            if end > len(buffer):
                break
            frames.append(bytes(buffer[offset + _HEADER.size : end]))
            offset = end
        del buffer[:offset]
        return frames
