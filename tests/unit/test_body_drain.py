"""The body of a refused request is read to its end (up to 4 × MAX_REQUEST_BYTES) before the
answer; tests/e2e/test_oversized_bodies.py shows what clients gain from it."""

from __future__ import annotations

import io

import pytest

from tests.unit.conftest import AUTH, assert_error

LIMIT = 4096  # conftest.LIMITS


class Input(io.BytesIO):
    """wsgi.input that counts what was read of it."""


def send(client, size: int, headers: dict[str, str] | None = None, chunked: bool = False,
         answer: list[dict[str, str]] | None = None) -> tuple[int, Input]:
    """``answer``: a list that gets the response's headers."""
    stream = Input(b"a" * size)
    headers = {**(AUTH if headers is None else headers), "Content-Type": "application/json"}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(size)
    extras = {"wsgi.input": stream, "wsgi.input_terminated": True}
    result = client.simulate_post("/v1/embeddings", headers=headers, extras=extras)
    if answer is not None:
        answer.append(result.headers)
    return result.status_code, stream


@pytest.mark.parametrize("size", [LIMIT + 1, 3 * LIMIT, 4 * LIMIT])
def test_a_body_over_the_limit_is_read_to_its_end_before_the_413(client, size):
    status, stream = send(client, size)
    assert status == 413 and stream.tell() == size


def test_a_body_far_over_the_bound_is_not_read(client):
    headers: list[dict[str, str]] = []
    status, stream = send(client, 4 * LIMIT + 1, answer=headers)
    assert status == 413 and stream.tell() == 0
    # The connection closes: else gunicorn would go on reading it for the next request, in a thread.
    assert headers[0]["connection"] == "close"


def test_a_drained_body_leaves_the_connection_open(client):
    headers: list[dict[str, str]] = []
    send(client, 2 * LIMIT, answer=headers)
    send(client, 10 * LIMIT, chunked=True, answer=headers)  # past the bound: not all drained
    assert "connection" not in headers[0] and headers[1]["connection"] == "close"


def test_a_chunked_body_is_read_up_to_the_bound(client):
    status, stream = send(client, 3 * LIMIT, chunked=True)
    assert status == 413 and stream.tell() == 3 * LIMIT
    status, stream = send(client, 10 * LIMIT, chunked=True)
    # What the endpoint read (the limit and a byte), then the rest of the bound.
    assert status == 413 and stream.tell() == LIMIT + 1 + 3 * LIMIT


def test_a_refusal_before_the_body_is_read_drains_it(client):
    status, stream = send(client, 2 * LIMIT, headers={"Authorization": "Bearer wrong"})
    assert status == 401 and stream.tell() == 2 * LIMIT


def test_a_served_request_is_untouched(client):
    result = client.simulate_post("/v1/embeddings", json={"input": "a"}, headers=AUTH)
    assert result.status_code == 200
    assert_error(client.simulate_post("/v1/embeddings", body=b"{", headers=AUTH), 400)
