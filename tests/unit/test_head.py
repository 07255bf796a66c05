"""HEAD is answered wherever GET is: the same status and headers, no body."""

from __future__ import annotations

import pytest

from tests.unit.conftest import AUTH

CHANGING = {"x-request-id", "content-length"}  # a new id per request; the length below
GROWING = {"/metrics", "/stats", "/health/detailed"}  # counters and times: their length changes between two calls


def get_paths(client) -> list[str]:
    paths = [path for path, ops in client.simulate_get("/openapi.json").json["paths"].items() if "get" in ops]
    return [p.replace("{model_id}", "bge-m3") for p in paths] + ["/docs/swagger-ui.css"]


def test_every_get_path_of_the_document_is_covered(client):
    assert {"/health", "/stats", "/", "/metrics", "/openapi.json", "/info", "/docs"} <= set(get_paths(client))


@pytest.mark.parametrize("auth", [True, False])
def test_head_answers_like_get_without_the_body(client, auth):
    headers = AUTH if auth else {}
    for path in get_paths(client):
        got = client.simulate_get(path, headers=headers)
        head = client.simulate_head(path, headers=headers)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        assert set(head.headers) == set(got.headers), path
        assert all(head.headers[k] == v for k, v in got.headers.items() if k.lower() not in CHANGING), path
        if path not in GROWING:
            assert int(head.headers["Content-Length"]) == len(got.content), path


def test_head_is_refused_where_get_is(client):
    result = client.simulate_head("/v1/embeddings", headers=AUTH)
    assert result.status_code == 405 and "GET" not in result.headers["Allow"]
