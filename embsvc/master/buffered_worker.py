"""gunicorn's threaded worker, with each request read whole before a thread takes it.

gthread hands a connection to a thread as soon as it is readable, and the thread then
blocks on the socket until the head and the body are in: a client that sends a byte
every few seconds (or a chunked body that never ends) holds a thread for as long as it
likes, and some dozens of them leave none for ``/health``. Here the worker's event loop
reads each request, without blocking, until ``framing.RequestFrame`` says the parser
can go on without waiting (as nginx buffers a request before passing it on); only then
does a thread take it, its bytes put back in front of gunicorn's parser. A slow client
costs a file descriptor and its buffer, never a thread.

A thread that answered a kept-alive connection waits a moment (``linger_s``) for the client's
next request and serves it itself when it comes whole and no other connection waits for a
thread (``_next_request_here``): a busy client then skips the event loop and the hand-over.

The bounds (READ_TIMEOUT_S, READ_DEADLINE_S): a request that brings no byte for
``read_timeout_s``, or is not whole ``read_deadline_s`` after its first byte, is answered
408 and closed; a connection that never sends a byte is closed after ``read_timeout_s``.
Connections past ``worker_connections`` wait in the kernel's backlog. The bodies held at
once are bounded too (``buffer_budget``: what the threads held when they read them):
past it, a connection with a large body waits, unread, for room (its deadline still runs),
while small requests such as ``/health`` are read as ever.

Over TLS the bytes on the socket are not the request's, and HTTP/2 and uWSGI frame requests
otherwise: for them (none is used here) gthread's own reading applies.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
import time
from functools import partial
from typing import Any

from gunicorn.http.parser import Parser, RequestParser
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import TConn, ThreadWorker

from embsvc.master.framing import RequestFrame
from runtime import malloc

_RECV = 64 * 1024
_SMALL = 64 * 1024  # a request this small is read whatever the budget: probes and queries are
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s")
_TIMEOUT_BODY = (b'{"error": {"message": "the request did not arrive in time", "type": "invalid_request_error", '
                 b'"param": null, "code": null}, "detail": "the request did not arrive in time"}')


class _Reading:
    """A connection whose next request is being read on the event loop."""

    def __init__(self, conn: TConn, frame: RequestFrame, data: bytes, read_timeout_s: float) -> None:
        self.conn, self.frame, self.buf = conn, frame, bytearray(data)
        self.read_timeout_s = read_timeout_s
        self.started = time.monotonic()
        self.idle_until = self.started + read_timeout_s
        self.continued = False
        self.listening = False  # registered with the worker's poller

    def got(self, data: bytes) -> None:
        self.buf += data
        self.idle_until = time.monotonic() + self.read_timeout_s


class BufferedThreadWorker(ThreadWorker):
    read_timeout_s = 5.0
    read_deadline_s = 60.0
    max_body = 32 * 1024 * 1024  # the most of a body read here; past it the app answers (413) at once
    buffer_budget = 256 * 1024 * 1024  # the most of all bodies held at once
    # How long a thread that answered a kept-alive connection waits for its next request before it
    # hands the connection back to the event loop (``_next_request_here``).
    linger_s = 0.002

    @classmethod
    def with_limits(cls, read_timeout_s: float, read_deadline_s: float, max_body: int,
                    buffer_budget: int) -> type[BufferedThreadWorker]:
        """The worker class with these bounds (gunicorn.conf.py hands gunicorn the class)."""
        limits = {"read_timeout_s": read_timeout_s, "read_deadline_s": read_deadline_s, "max_body": max_body,
                  "buffer_budget": buffer_budget}
        return type(cls.__name__, (cls,), {**limits, "__module__": cls.__module__})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading: dict[int, _Reading] = {}  # by socket file number
        self.whole: set[TConn] = set()  # read here, on their way to a thread
        self.paused: list[_Reading] = []  # waiting for room in the budget, unread
        self.buffered = 0  # bytes held by the connections being read
        self.handling = 0  # requests in the threads' hands
        self.handled = 0  # connections the threads have handed back, since the worker started
        self._handling_lock = threading.Lock()
        cfg = self.cfg
        # The longest head gunicorn's parser takes: a longer one is refused without waiting.
        self.max_head = cfg.limit_request_line + 2 + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 2

    def init_process(self) -> None:
        # A large answer (a ColBERT batch's JSON: megabytes) leaves its pages in the heap: given
        # back once no request is in hand, so that a worker's idle memory is not its largest answer's.
        malloc.trim_when_idle(lambda: self.handling, lambda: self.handled)
        super().init_process()

    def handle(self, conn: TConn) -> Any:
        with self._handling_lock:
            self.handling += 1
        try:
            kept = super().handle(conn)
            while kept is True and self._next_request_here(conn):
                kept = super().handle(conn)
            return kept
        finally:
            with self._handling_lock:
                self.handling -= 1
                self.handled += 1

    def _next_request_here(self, conn: TConn) -> bool:
        """Whether the connection's next request came whole within ``linger_s`` of its answer, and
        this thread serves it. A busy client's next request then skips the event loop and the hand-over
        to a thread (waking both, registering the socket again; docs/performance.md measures it). Only
        while no other connection waits for a thread; whatever part of a request came is left in the
        parser, where the event loop takes it up as for a pipelined one."""
        parser = conn.parser
        if (self.linger_s <= 0 or not self.alive or not isinstance(parser, Parser) or not self._reads_here(conn)
                or parser.unreader.buf.getvalue() or _waiting(self.tpool)):
            return False
        sock = conn.sock
        try:
            sock.settimeout(self.linger_s)
            data = sock.recv(_RECV)
        except OSError:  # the wait's end (TimeoutError) or a broken connection, which the event loop finds
            return False
        if not data:
            return False  # closed: the event loop sees it at once
        parser.unreader.unread(data)
        return RequestFrame(self.max_head, self.max_body).feed(data)

    def accept(self, listener: socket.socket) -> None:
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.enqueue_req(TConn(self.cfg, client, address, listener.getsockname()))

    def enqueue_req(self, conn: TConn) -> None:
        """Every connection with a request to come (new, kept alive, pipelined) is read here first."""
        parser = conn.parser
        if conn in self.whole or not self._reads_here(conn) or not isinstance(parser, (Parser, type(None))):
            self.whole.discard(conn)
            super().enqueue_req(conn)
            return
        held = parser.unreader.take_buffered() if parser is not None else b""
        reading = _Reading(conn, RequestFrame(self.max_head, self.max_body), held, self.read_timeout_s)
        if held and reading.frame.feed(reading.buf):
            self._hand_over(reading)
            return
        sock = conn.sock
        if sock.gettimeout() != 0.0:  # gthread leaves it non-blocking here already: no system call then
            sock.setblocking(False)
        self.reading[sock.fileno()] = reading
        self.buffered += len(reading.buf)
        # Usually the request is there already (a kept-alive connection is here because it became
        # readable, and a new one's client writes right after connecting): read it at once, and
        # watch the socket only when more is to come.
        if self._read(reading, sock):
            self._listen(reading)

    def _reads_here(self, conn: TConn) -> bool:
        """Plain HTTP/1: what ``framing`` knows how to read (gunicorn serves the rest, unused here, itself)."""
        cfg = self.cfg
        return not (cfg.is_ssl or conn.is_http2 or getattr(cfg, "protocol", "http") != "http"
                    or negotiation.prior_knowledge_allowed(cfg, conn.client))

    def _listen(self, reading: _Reading) -> None:
        self.poller.register(reading.conn.sock, selectors.EVENT_READ, partial(self._on_readable, reading))
        reading.listening = True

    def _unlisten(self, reading: _Reading) -> None:
        if reading.listening:
            reading.listening = False
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(reading.conn.sock)

    def _on_readable(self, reading: _Reading, sock: socket.socket) -> None:
        self._read(reading, sock)

    def _read(self, reading: _Reading, sock: socket.socket) -> bool:
        """One read of the request; whether it is still being read here (False: handed over, dropped
        or paused)."""
        if len(reading.buf) >= _SMALL and self.buffered >= self.buffer_budget:
            if _hung_up(sock):
                self._drop(reading)
            else:
                self._unlisten(reading)  # level-triggered: left registered, it would wake the loop again
                self.paused.append(reading)
            return False
        try:
            data = sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:  # the client closed it
            self._drop(reading)
            return False
        reading.got(data)
        self.buffered += len(data)
        if reading.frame.feed(reading.buf):
            self._stop_reading(reading)
            self._hand_over(reading)
            return False
        if reading.frame.expects_continue and reading.frame.head_end is not None and not reading.continued:
            # The client waits for this before it sends the body. The thread's parser sends gunicorn's own
            # later: a second 1xx before the answer, which clients must take (RFC 9110 15.2; curl does).
            reading.continued = True
            with contextlib.suppress(OSError):
                sock.send(_CONTINUE)
        return True

    def _hand_over(self, reading: _Reading) -> None:
        conn = reading.conn
        parser = conn.parser or RequestParser(self.cfg, conn.sock, conn.client)
        assert isinstance(parser, Parser)  # enqueue_req reads only connections that speak HTTP/1
        parser.unreader.unread(bytes(reading.buf))
        conn.parser = parser
        conn.data_ready = True  # no wait in the thread: the request is here
        self.whole.add(conn)
        self.enqueue_req(conn)

    def _stop_reading(self, reading: _Reading) -> None:
        if self.reading.pop(reading.conn.sock.fileno(), None) is not None:
            self.buffered -= len(reading.buf)
        if reading in self.paused:
            self.paused.remove(reading)
        else:
            self._unlisten(reading)

    def _drop(self, reading: _Reading, answer: bytes = b"") -> None:
        self._stop_reading(reading)
        if answer:
            with contextlib.suppress(OSError):
                reading.conn.sock.send(answer)  # best effort: a full send buffer means the client is not reading
        self.nr_conns -= 1
        reading.conn.close()

    def murder_pending(self) -> None:
        """Also ends the requests that stalled or ran past their deadline (called about once a second)."""
        super().murder_pending()
        for gone in [reading for reading in self.paused if _hung_up(reading.conn.sock)]:
            self._drop(gone)  # its bytes go back to the budget
        now = time.monotonic()
        while self.paused and self.buffered < self.buffer_budget:
            resumed = self.paused.pop(0)
            resumed.idle_until = now + self.read_timeout_s  # its wait was the server's, not the client's
            self._listen(resumed)
        late: list[tuple[_Reading, bytes]] = []
        for reading in self.reading.values():
            stalled = now >= reading.idle_until and reading not in self.paused
            overdue = now - reading.started >= self.read_deadline_s
            if stalled or overdue:
                # A connection that sent nothing of a request gets no answer, as with nginx.
                late.append((reading, _TIMEOUT_ANSWER % (len(_TIMEOUT_BODY), _TIMEOUT_BODY) if reading.buf else b""))
        for reading, answer in late:
            self._drop(reading, answer)
        if late:
            self.log.info("Closed %d connections that were too slow to send their request", len(late))


def _waiting(pool: object) -> bool:
    """Whether connections wait for a thread of the worker's pool (a ``ThreadPoolExecutor``)."""
    queue = getattr(pool, "_work_queue", None)
    return queue is None or not queue.empty()


def _hung_up(sock: socket.socket) -> bool:
    """Whether the client closed its side (or the connection broke), without taking a byte."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
