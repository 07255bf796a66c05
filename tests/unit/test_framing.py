"""Where a request ends, told from its bytes as they arrive (embsvc/master/framing.py)."""

from __future__ import annotations

import pytest

from embsvc.master.framing import RequestFrame

HEAD = b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"


def frame(max_head: int = 8192, max_body: int = 1000) -> RequestFrame:
    return RequestFrame(max_head, max_body)


def ready_at(request: bytes, **limits: int) -> int | None:
    """The length of the shortest prefix of ``request``, fed a byte at a time, that is ready."""
    scanner = frame(**limits)
    for end in range(1, len(request) + 1):
        if scanner.feed(request[:end]):
            return end
    return None


@pytest.mark.parametrize("request_bytes", [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    HEAD + b"Content-Length: 5\r\n\r\nhello",
    HEAD + b"Content-Length: 0\r\n\r\n",
    HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n",
    HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n1\r\na\r\n0\r\nTrailer: t\r\n\r\n",
])
def test_a_complete_request_is_ready_at_its_last_byte_and_not_before(request_bytes):
    assert ready_at(request_bytes) == len(request_bytes)


def test_bytes_of_the_next_request_change_nothing():
    one = HEAD + b"Content-Length: 2\r\n\r\n{}"
    assert frame().feed(one + b"GET /health HTTP/1.1\r\n")


@pytest.mark.parametrize("request_bytes, at", [
    # What the parser refuses at once is handed over at once, for it to answer 400 (or the app 413).
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", len(HEAD) + 34),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;\x00\r\nab\r\n0\r\n\r\n", None),  # well framed: the parser judges
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabXY", None),  # no CRLF after the data
    (HEAD + b"Content-Length: 1001\r\n\r\n", len(HEAD) + 24),  # past max_body: the app answers 413
    (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", len(HEAD) + 40),
    (HEAD + b"Content-Length: -1\r\n\r\n", len(HEAD) + 22),
    (HEAD + b"Transfer-Encoding: gzip\r\n\r\n", len(HEAD) + 27),
    (HEAD + b"No colon here\r\n\r\n", len(HEAD) + 17),
    (HEAD + b"Content-Length : 5\r\n\r\n", len(HEAD) + 22),  # not a length: the parser refuses the name
    (b"GET / HTTP/1.1\nHost: x\n\n", 24),  # bare LF: refused by the parser
])
def test_what_the_parser_refuses_is_handed_over_without_waiting(request_bytes, at):
    assert ready_at(request_bytes) == (at or len(request_bytes))


def test_a_head_past_the_parser_limit_is_handed_over():
    assert ready_at(HEAD + b"X: " + b"a" * 200, max_head=100) == 101


def test_a_chunked_body_past_max_body_is_handed_over_at_the_chunk_that_passes_it():
    body = b"".join(b"100\r\n" + b"a" * 256 + b"\r\n" for _ in range(5))
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body
    assert ready_at(request, max_body=1000) == len(HEAD) + 30 + 3 * 263 + 5


def test_a_chunked_body_of_many_chunks_is_scanned_once():
    scanner = frame(max_body=1 << 20)
    buf = bytearray(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(2000):
        buf += b"1\r\na\r\n"
        assert not scanner.feed(buf)
    assert scanner._pos == len(buf)  # resumes at the next chunk, not at the body's start
    buf += b"0\r\n\r\n"
    assert scanner.feed(buf)


def test_expect_100_continue_is_noticed():
    scanner = frame()
    assert not scanner.feed(HEAD + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert scanner.expects_continue and scanner.head_end is not None
