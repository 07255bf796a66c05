"""Where an HTTP/1.1 request ends, told from its first bytes as they arrive (RFC 9112 section 6).

The web workers read each request whole before a thread takes it (``buffered_worker``): this
says when the bytes held so far are enough for gunicorn's parser to answer without waiting
on the client. That is when the request is complete (head and body), and also as soon as
the parser would refuse it anyway (malformed framing, a head past gunicorn's limits, a body
announced past MAX_REQUEST_BYTES, which the app refuses with a 413): the parser and the app
keep the last word on what is valid; this only needs to never say "ready" while they would
still block.

``feed`` is called with the whole buffer after each read and resumes where it stopped, so a
body of many small chunks is scanned once, not once per read.
"""

from __future__ import annotations

_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MAX_CHUNK_LINE = 4096  # a chunk-size line longer than this is refused by the parser anyway


class RequestFrame:
    """One request's framing, from its first byte (``buf[0]``) on."""

    def __init__(self, max_head: int, max_body: int) -> None:
        self.max_head, self.max_body = max_head, max_body
        self.head_end: int | None = None  # where the body starts
        self.expects_continue = False
        self._length: int | None = None  # of a Content-Length body
        self._chunked = False
        self._ready = False
        self._searched = 0  # of the head: where the search for its end resumes
        self._pos = 0  # of a chunked body: the next chunk-size line
        self._decoded = 0  # of a chunked body: its data so far

    def feed(self, buf: bytes | bytearray) -> bool:
        """Whether ``buf`` (all bytes of the request so far) lets the parser go on without waiting."""
        if not self._ready:
            self._ready = self._scan(buf)
        return self._ready

    def _scan(self, buf: bytes | bytearray) -> bool:
        if self.head_end is None:
            end = buf.find(_HEAD_END, max(0, self._searched - 3))
            if end < 0:
                self._searched = len(buf)
                # A bare LF ends lines too in some clients: the parser refuses them at once.
                return len(buf) > self.max_head or b"\n\n" in buf
            self.head_end = end + len(_HEAD_END)
            if self.head_end > self.max_head or not self._read_head(bytes(buf[:end])):
                return True
            self._pos = self.head_end
        if self._chunked:
            return self._scan_chunks(buf)
        return self._length is None or len(buf) - self.head_end >= self._length

    def _read_head(self, head: bytes) -> bool:
        """The body's framing from the head; False where the parser will refuse the head."""
        lengths, codings = [], []
        for line in head.split(_CRLF)[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                return False
            # No white space is allowed around a name: the parser refuses "Content-Length :" at once.
            name, value = name.lower(), value.strip()
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
            elif name == b"expect":
                self.expects_continue = value.lower() == b"100-continue"
        if codings:
            self._chunked = codings[-1] == b"chunked" and not lengths
            return self._chunked
        if not lengths:
            return True  # no body
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            return False
        self._length = int(lengths[0])
        return self._length <= self.max_body  # past it the app answers 413 without the body

    def _scan_chunks(self, buf: bytes | bytearray) -> bool:
        while True:
            eol = buf.find(_CRLF, self._pos)
            if eol < 0:
                return len(buf) - self._pos > _MAX_CHUNK_LINE
            size_text = bytes(buf[self._pos:eol]).split(b";", 1)[0]
            if not size_text or not _HEX.issuperset(size_text) or len(size_text) > 16:
                return True  # malformed: the parser refuses it
            size = int(size_text, 16)
            if size == 0:  # the last chunk: then trailer lines, up to an empty one
                return buf.find(_HEAD_END, eol) >= 0 or len(buf) - eol > self.max_head
            if self._decoded + size > self.max_body:
                return True  # the app answers 413
            data_end = eol + len(_CRLF) + size
            if len(buf) < data_end + len(_CRLF):
                return False  # the chunk is scanned again, whole, after the next read
            if buf[data_end:data_end + len(_CRLF)] != _CRLF:
                return True
            self._decoded += size
            self._pos = data_end + len(_CRLF)
