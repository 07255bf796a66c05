"""A catalogue of hostile and malformed requests against the real server.

Every one gets the status and error body of docs/api.md, none a 5xx, and the
server answers a normal request right after each. Two decisions the contract
leaves open, taken as its original clients would expect (it was a FastAPI app,
whose JSON parser is Python's ``json``):

- duplicate keys: the last one wins, as in Python's ``json``, JavaScript's
  ``JSON.parse`` and orjson. Nothing in front of the service reads the body,
  so no two parsers can disagree about which one counts;
- NUL: a raw NUL byte inside a JSON string is invalid JSON (RFC 8259 wants
  control characters escaped), so 400; an escaped ``\\u0000`` is a character like
  any other (it is not white space), so the input is embedded as the tokenizer
  sees it, as FlagEmbedding would.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import requests

from testkit.server import Server
from tests.e2e.conftest import AUTH, TOKEN, embed

MAX_INPUTS = 256
MAX_TOKENS = 8192
MAX_BYTES = 8 * 1024 * 1024
WRONG_TOKENS = ("wrong-token-5d1c", f"{TOKEN}x", TOKEN[: len(TOKEN) // 2], "tök€n-wrong")
LEAKS = ("Traceback", 'File "', ".py", "/work", "site-packages", TOKEN, *WRONG_TOKENS)


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    error_type: str
    body: bytes | None = None
    method: str = "POST"
    path: str = "/v1/embeddings"
    headers: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    param: str | None = None  # checked when set


def js(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def bad(name: str, body: bytes, param: str | None = None, status: int = 400) -> Case:
    return Case(name, status, "invalid_request_error", body, param=param)


def wrong_type(field_name: str, value: object) -> Case:
    body = {"input": "a text", field_name: value} if field_name != "input" else {"input": value}
    return bad(f"{field_name}={json.dumps(value)[:30]}", js(body), param=field_name)


PROTECTED = [("POST", "/v1/embeddings"), ("GET", "/stats"), ("GET", "/v1/models"), ("GET", "/v1/models/bge-m3"),
             ("POST", "/v1/score"), ("POST", "/v1/rerank"), ("POST", "/v2/rerank"), ("POST", "/tokenize")]
AUTH_HEADERS = {
    "missing": {},
    "scheme only": {"Authorization": "Bearer"},
    "empty token": {"Authorization": "Bearer    "},
    "basic": {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
    "token without scheme": {"Authorization": TOKEN},
    "other scheme": {"Authorization": f"Token {TOKEN}"},
    **{f"wrong token {i}": {"Authorization": f"Bearer {t}"} for i, t in enumerate(WRONG_TOKENS)},
}

CATALOGUE: list[Case] = [
    # -- bodies that are not JSON, or cut short --------------------------------------
    bad("empty body", b""),
    bad("white space body", b"  \n\t "),
    bad("lone brace", b"{"),
    bad("truncated string", b'{"input": "abc'),
    bad("truncated list", b'{"input": ["a", "b"'),
    bad("truncated after key", b'{"input":'),
    bad("trailing comma", b'{"input": "abc",}'),
    bad("single quotes", b"{'input': 'abc'}"),
    bad("form encoded", b"input=hello+world"),
    bad("trailing garbage", b'{"input": "abc"} {"input": "def"}'),
    bad("NaN", b'{"input": "a", "max_length": NaN}'),
    bad("Infinity", b'{"input": "a", "max_length": Infinity}'),
    bad("byte order mark", b'\xef\xbb\xbf{"input": "a"}'),
    bad("comment", b'{"input": "a" /* hi */}'),
    # -- JSON, but not an object ------------------------------------------------------
    bad("array body", js([{"input": "a"}])),
    bad("string body", js("embed me")),
    bad("number body", b"42"),
    bad("null body", b"null"),
    bad("true body", b"true"),
    # -- deep nesting -----------------------------------------------------------------
    bad("100k open brackets", b"[" * 100_000),
    bad("deep object in an ignored field", b'{"input": "a", "x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"),
    bad("deep list as input", b'{"input": ' + b"[" * 500 + b'"a"' + b"]" * 500 + b"}", param="input"),
    # -- wrong types everywhere --------------------------------------------------------
    wrong_type("input", 42),
    wrong_type("input", None),
    wrong_type("input", True),
    wrong_type("input", {"text": "a"}),
    wrong_type("input", [["nested", "list"]]),
    wrong_type("input", [101, 2003, 102]),
    wrong_type("input", [[101, 2003, 102]]),
    wrong_type("input", ["fine", None]),
    wrong_type("input", ["fine", 3.5]),
    wrong_type("model", 3),
    wrong_type("model", None),
    wrong_type("model", ["bge-m3"]),
    wrong_type("return_dense", "true"),
    wrong_type("return_sparse", 1),
    wrong_type("return_colbert", None),
    wrong_type("return_dense", [True]),
    wrong_type("truncate", "false"),
    wrong_type("truncate", 0),
    wrong_type("encoding_format", "int8"),
    wrong_type("encoding_format", None),
    wrong_type("encoding_format", 1),
    wrong_type("max_length", "512"),
    wrong_type("max_length", None),
    wrong_type("max_length", 0),
    wrong_type("max_length", -1),
    wrong_type("max_length", 10**9),
    wrong_type("max_length", 3.5),
    wrong_type("max_length", True),
    wrong_type("max_length", MAX_TOKENS + 1),
    wrong_type("user", 5),
    wrong_type("user", ["someone"]),
    bad("duplicate key, the last one wrong", b'{"input": "fine", "input": 5}', param="input"),
    # -- empty and white-space inputs --------------------------------------------------
    bad("no input", js({}), param="input"),
    bad("model only", js({"model": "bge-m3"}), param="input"),
    bad("empty string", js({"input": ""}), param="input"),
    bad("white space string", js({"input": " \t\n "}), param="input"),
    bad("ideographic space", js({"input": "\u3000\u2003"}), param="input"),
    bad("empty list", js({"input": []}), param="input"),
    bad("one empty item", js({"input": ["fine", ""]}), param="input"),
    bad("one blank item", js({"input": ["fine", "   "]}), param="input"),
    bad("all kinds off", js({"input": "a", "return_dense": False, "return_sparse": False,
                             "return_colbert": False})),
    # -- too much -----------------------------------------------------------------------
    bad("too many inputs", js({"input": ["a"] * (MAX_INPUTS + 1)}), param="input", status=413),
    bad("body over MAX_REQUEST_BYTES", js({"input": "x" * (MAX_BYTES + 10)}), status=413),
    bad("200,000 characters, truncate false", js({"input": "word " * 40_000, "truncate": False}), param="input"),
    # -- bytes that are not text ----------------------------------------------------------
    bad("invalid UTF-8", b'{"input": "\xff\xfe"}'),
    bad("truncated UTF-8 sequence", b'{"input": "abc\xc3"}'),
    bad("overlong UTF-8", b'{"input": "\xc0\xaf"}'),
    bad("UTF-16 body", '{"input": "a"}'.encode("utf-16")),
    bad("lone high surrogate", b'{"input": "\\ud800"}'),
    bad("lone low surrogate", b'{"input": "abc\\udc00"}'),
    bad("raw NUL byte in a string", b'{"input": "a\x00b"}'),
    bad("raw control character", b'{"input": "a\x07b"}'),
    # -- unknown models and paths -----------------------------------------------------------
    Case("unknown model", 404, "not_found_error", js({"input": "a", "model": "gpt-4"}), param="model"),
    Case("empty model", 404, "not_found_error", js({"input": "a", "model": ""}), param="model"),
    Case("model with a space", 404, "not_found_error", js({"input": "a", "model": "BAAI/bge-m3 "}), param="model"),
    Case("unknown model card", 404, "not_found_error", method="GET", path="/v1/models/gpt-4"),
    Case("path traversal model", 404, "not_found_error", method="GET", path="/v1/models/..%2f..%2fetc%2fpasswd"),
    *(Case(f"unknown path {p}", 404, "not_found_error", method=m, path=p) for m, p in [
        ("GET", "/nope"), ("POST", "/v1/embedding"), ("POST", "/v2/embeddings"), ("GET", "/v1/embeddings/extra"),
        ("GET", "/.env"), ("GET", "/%2e%2e/%2e%2e/etc/passwd"), ("GET", "/v1/embeddings%00"),
        ("GET", "/" + "a" * 3000)]),
    # -- wrong methods --------------------------------------------------------------------------
    *(Case(f"{m} {p}", 405, "invalid_request_error", b"{}", method=m, path=p) for m, p in [
        ("GET", "/v1/embeddings"), ("PUT", "/v1/embeddings"), ("DELETE", "/v1/embeddings"),
        ("PATCH", "/v1/embeddings"), ("POST", "/health"), ("POST", "/stats"), ("DELETE", "/v1/models"),
        ("POST", "/openapi.json"), ("PUT", "/"), ("TRACE", "/")]),
    # -- Authorization on every protected endpoint -------------------------------------------------
    *(Case(f"{name}: {m} {p}", 401, "authentication_error", js({"input": "a"}), method=m, path=p, headers=h)
      for m, p in PROTECTED for name, h in AUTH_HEADERS.items()),
]


# -- text-embeddings-inference's paths: TEI's error body ({"error", "error_type"}) and statuses --------
TEI_PROTECTED = [("POST", "/embed"), ("POST", "/"), ("POST", "/embed_sparse"), ("POST", "/embed_all"),
                 ("POST", "/rerank"), ("POST", "/decode"), ("GET", "/info")]


def tei(name: str, body: bytes | object, status: int = 422, error_type: str = "Validation", path: str = "/embed",
        method: str = "POST", headers: dict[str, str] | None = None) -> Case:
    """A TEI case: ``body`` as bytes, or JSON to encode; ``error_type`` is TEI's ErrorType."""
    raw = body if isinstance(body, bytes) or body is None else js(body)
    return Case(f"TEI {path} {name}", status, error_type, raw, method, path, dict(AUTH) if headers is None else headers)


TEI_CATALOGUE: list[Case] = [
    # -- bodies ---------------------------------------------------------------------------------------
    tei("empty body", b"", 400, "Empty"),
    tei("white space body", b" \n\t", 400, "Empty"),
    tei("lone brace", b"{"),
    tei("trailing garbage", b'{"inputs": "a"} x'),
    tei("array body", [{"inputs": "a"}]),
    tei("100k open brackets", b"[" * 100_000),
    tei("invalid UTF-8", b'{"inputs": "\xff\xfe"}'),
    tei("lone surrogate", b'{"inputs": "\\ud800"}'),
    tei("body over MAX_REQUEST_BYTES", {"inputs": "x" * (MAX_BYTES + 10)}, 413),
    # -- inputs ---------------------------------------------------------------------------------------
    tei("no inputs", {}),
    tei("input instead of inputs", {"input": "a"}),
    *(tei(f"inputs={json.dumps(v)[:30]}", {"inputs": v}) for v in (None, 5, True, {"text": "a"}, ["a", None])),
    tei("token ids", {"inputs": [101, 2003, 102]}),
    tei("batches of token ids", {"inputs": [[101, 2003], [102]]}),
    tei("pairs of texts", {"inputs": [["a query", "a text"]]}),
    tei("empty list", {"inputs": []}, 400, "Empty"),
    tei("empty string", {"inputs": ""}, 400, "Empty"),
    tei("blank item", {"inputs": ["fine", " \u3000 "]}, 400, "Empty"),
    tei("too many inputs", {"inputs": ["a"] * (MAX_INPUTS + 1)}, 413),
    tei("too long, truncate false", {"inputs": "word " * 40_000, "truncate": False}),
    # -- options --------------------------------------------------------------------------------------
    *(tei(f"{k}={json.dumps(v)}", {"inputs": "a", k: v}) for k, v in (
        ("truncate", "true"), ("truncate", 1), ("truncation_direction", "middle"), ("truncation_direction", None),
        ("truncation_direction", {}), ("truncation_direction", ["left"]),
        ("normalize", False), ("normalize", None), ("normalize", "true"), ("dimensions", 0),
        ("dimensions", 1025), ("dimensions", "8"),
        ("prompt_name", "query"), ("prompt_name", 5))),
    tei("prompt_name on embed_sparse", {"inputs": "a", "prompt_name": "query"}, path="/embed_sparse"),
    tei("truncate false, too long", {"inputs": "word " * 40_000, "truncate": False}, path="/embed_all"),
    # -- rerank ---------------------------------------------------------------------------------------
    tei("no query", {"texts": ["a"]}, path="/rerank"),
    tei("query number", {"query": 5, "texts": ["a"]}, path="/rerank"),
    tei("blank query", {"query": "  ", "texts": ["a"]}, 400, "Empty", path="/rerank"),
    tei("texts a string", {"query": "q", "texts": "a"}, path="/rerank"),
    tei("empty texts", {"query": "q", "texts": []}, 400, "Empty", path="/rerank"),
    tei("too many texts", {"query": "q", "texts": ["a"] * (MAX_INPUTS + 1)}, 413, path="/rerank"),
    tei("return_text yes", {"query": "q", "texts": ["a"], "return_text": "yes"}, path="/rerank"),
    tei("raw_scores null", {"query": "q", "texts": ["a"], "raw_scores": None}, path="/rerank"),
    # -- decode ---------------------------------------------------------------------------------------
    tei("no ids", {}, path="/decode"),
    tei("empty ids", {"ids": []}, 400, "Empty", path="/decode"),
    tei("an empty list of ids", {"ids": [[1], []]}, 400, "Empty", path="/decode"),
    *(tei(f"ids={json.dumps(v)[:30]}", {"ids": v}, path="/decode") for v in (
        [-1], [2**32], [2**70], [1.5], ["1"], [True], [[1], 2], "12", 7)),
    tei("too many lists", {"ids": [[1]] * (MAX_INPUTS + 1)}, 413, path="/decode"),
    # -- TEI's /tokenize body -------------------------------------------------------------------------
    tei("tokenize empty inputs", {"inputs": []}, 400, "Empty", path="/tokenize"),
    tei("tokenize prompt_name", {"inputs": "a", "prompt_name": "query"}, path="/tokenize"),
    tei("tokenize add_special_tokens no", {"inputs": "a", "add_special_tokens": "no"}, path="/tokenize"),
    # -- wrong methods ----------------------------------------------------------------------------------
    *(tei(f"{m}", b"{}", 405, path=p, method=m) for m, p in [
        ("GET", "/embed"), ("PUT", "/embed_sparse"), ("DELETE", "/embed_all"), ("GET", "/rerank"),
        ("PATCH", "/decode"), ("POST", "/info")]),
    # -- Authorization on every TEI path ------------------------------------------------------------------
    *(tei(f"{name}: {m}", {"inputs": "a"}, 401, "Unauthorized", path=p, method=m, headers=h)
      for m, p in TEI_PROTECTED for name, h in AUTH_HEADERS.items()),
]


def send(server: Server, case: Case) -> requests.Response:
    headers = {k: v.encode("utf-8") for k, v in case.headers.items()}  # bytes: sent as they are
    return requests.request(case.method, f"{server.url}{case.path}", data=case.body, headers=headers, timeout=60)


def assert_told_nothing_more(response: requests.Response, case: Case) -> None:
    """No trace of the server's insides, and the headers its status calls for."""
    for leak in LEAKS:
        assert leak not in response.text, leak
    if case.status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    if case.status == 405:
        assert response.headers["Allow"]


def assert_still_serving(server: Server) -> None:
    embed(server, "still here")


def test_the_catalogue_is_large_and_names_are_unique():
    assert len(CATALOGUE) >= 50
    assert len({c.name for c in CATALOGUE}) == len(CATALOGUE)
    assert len(TEI_CATALOGUE) >= 50
    assert len({c.name for c in TEI_CATALOGUE}) == len(TEI_CATALOGUE)


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
def test_hostile_request(server, case):
    response = send(server, case)
    assert response.status_code == case.status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == case.error_type and error["code"] is None
    assert isinstance(error["message"], str) and error["message"] and body["detail"] == error["message"]
    if case.param is not None:
        assert error["param"] == case.param
    assert_told_nothing_more(response, case)
    assert_still_serving(server)


def test_duplicate_keys_take_the_last_value(server):
    last = embed(server, {"input": "the second text"})
    both = embed(server, b'{"input": "the first text", "input": "the second text"}')
    assert both["usage"] == last["usage"]
    np.testing.assert_allclose(both["data"][0]["dense_embedding"], last["data"][0]["dense_embedding"], atol=1e-6)
    flags = embed(server, b'{"input": "x", "return_dense": false, "return_dense": true, "return_sparse": true,'
                          b' "return_sparse": false}')
    assert flags["embedding_types"] == ["dense", "colbert"]


def test_an_escaped_nul_is_a_character_like_any_other(server):
    for text in ("a\u0000b", "\u0000"):
        body = embed(server, {"input": text, "return_colbert": False})
        assert len(body["data"][0]["dense_embedding"]) == 32
        assert body["usage"]["prompt_tokens"] >= 3


def test_200000_characters_are_cut_to_max_length(server):
    body = embed(server, {"input": "word " * 40_000, "return_colbert": False})
    assert body["usage"]["prompt_tokens"] == MAX_TOKENS
    body = embed(server, {"input": "x" * 200_000, "max_length": 16})
    assert body["usage"]["prompt_tokens"] == 16 and len(body["data"][0]["colbert_embedding"]) == 15


def test_lenient_where_clients_expect_it(server):
    assert embed(server, {"input": "a", "max_length": 512.0})["usage"]["prompt_tokens"] <= 512
    assert embed(server, {"input": "a", "user": None, "dimensions": 8, "unknown": {"x": [1]}})["data"]
    response = requests.post(f"{server.url}/v1/embeddings", data=b'{"input": "a"}',
                             headers={"Authorization": f"bearer {TOKEN}", "Content-Type": "text/plain"}, timeout=60)
    assert response.status_code == 200, "the scheme is case-insensitive and any Content-Type is read as JSON"


def raw_exchange(server: Server, head: bytes, chunks: list[bytes], limit_s: float = 10) -> tuple[bytes, int]:
    """Send ``head`` then ``chunks`` on one connection until the server answers;
    returns the answer's first bytes and how many body bytes were sent by then."""
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=limit_s) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered before the whole body was sent
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        deadline, answer = time.monotonic() + limit_s, b""
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer, sent


def test_a_huge_declared_body_is_refused_before_it_is_sent(server):
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {2**31}\r\n\r\n").encode()
    started = time.monotonic()
    answer, _ = raw_exchange(server, head, [b'{"input": "' + b"x" * 1000])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 5, "it did not wait for the 2 GiB"
    assert_still_serving(server)


def chunked(body: bytes, size: int = 100) -> list[bytes]:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces] + [b"0\r\n\r\n"]


def test_a_chunked_body_is_read(server):
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    answer, _ = raw_exchange(server, head, chunked(js({"input": ["sent", "in", "pieces"]})))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_a_chunked_body_is_refused_once_it_passes_the_limit(server):
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    piece = b"x" * (256 * 1024)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer, sent = raw_exchange(server, head, [b"b\r\n{\"input\": \"\r\n"] + [chunk] * 512)  # 128 MiB offered
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # What the client got rid of includes the kernel's loopback buffers (several MiB each way)
    # besides what the server reads: the limit, then up to 4 times the limit in all, which it
    # drops so that a client sending its whole body first reads the 413 (embsvc/api/body_drain.py).
    assert sent < 4 * MAX_BYTES + 16 * 1024 * 1024, f"{sent} bytes were taken before the refusal"
    assert_still_serving(server)


def test_no_response_or_log_line_holds_a_token(server):
    for path in ("/", "/health", "/stats", "/v1/models", "/openapi.json", "/info", "/health/detailed", "/docs"):
        response = requests.get(f"{server.url}{path}", headers=AUTH, timeout=10)
        assert response.status_code == 200 and TOKEN not in response.text, path
    log = server.log()
    assert "DEBUG" in log, "the server logs at DEBUG level here"
    assert "POST /v1/embeddings" in log, "requests are logged"
    for secret in (TOKEN, *WRONG_TOKENS):
        assert secret not in log, f"{secret!r} is in the log"


@pytest.mark.parametrize("case", TEI_CATALOGUE, ids=lambda c: c.name)
def test_hostile_tei_request(server, case):
    """TEI's paths answer in TEI's shape, with TEI's statuses (docs/api.md)."""
    response = send(server, case)
    assert response.status_code == case.status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_type"}, body
    assert body["error_type"] == case.error_type, body
    assert isinstance(body["error"], str) and body["error"]
    assert_told_nothing_more(response, case)
    assert_still_serving(server)
