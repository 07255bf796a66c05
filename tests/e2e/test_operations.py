"""What operators' tools meet: HEAD on the GET endpoints, and a JSON log that is plain text with
transformers' load report on one line (real gunicorn, real engine)."""

from __future__ import annotations

import http.client
import json

import pytest
import requests

from tests.e2e.conftest import AUTH


@pytest.mark.parametrize("path", ["/health", "/", "/info", "/stats", "/v1/models", "/openapi.json", "/docs",
                                  "/health/detailed", "/metrics"])
def test_head_is_answered_with_get_s_headers_and_no_body(server, path):
    got = requests.get(f"{server.url}{path}", headers=AUTH, timeout=10)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("HEAD", path, headers=AUTH)
    head = conn.getresponse()
    assert head.status == got.status_code == 200, path
    assert head.read() == b""
    assert head.getheader("Content-Type") == got.headers["Content-Type"]
    assert int(head.getheader("Content-Length")) > 0
    # The connection goes on: no body was sent that the next answer would be mistaken for.
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()


@pytest.mark.slow
def test_the_json_log_of_a_start_is_plain_text_with_the_load_report_on_one_line(start_server):
    server = start_server(LOG_FORMAT="json")
    server.stop()
    raw = server.log()
    assert "\x1b" not in raw and "\\u001b" not in raw, "terminal escapes in the log"
    records = [json.loads(line) for line in raw.splitlines()]  # every line is one JSON record
    reports = [r for r in records if "load report" in r["message"]]
    assert len(reports) == 1, [r["message"] for r in records]
    (report,) = reports
    assert report["logger"].startswith("transformers") and "\n" not in report["message"]
    assert report["message"].startswith("XLMRobertaModel load report from ")
    # The checkpoint's pooler, which bge-m3 does not use; transformers lists the keys in no fixed order.
    assert "UNEXPECTED pooler.dense." in report["message"]
    assert "pooler.dense.bias" in report["message"] and "pooler.dense.weight" in report["message"]
