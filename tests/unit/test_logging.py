"""Log lines: JSON or text, the request id on every line of a request, gunicorn's access log."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from gunicorn.config import Config

from embsvc.master.access_log import AccessLogger, redact
from runtime import logs
from tests.unit.conftest import AUTH


@pytest.fixture
def captured(monkeypatch):
    """Configure logging as a server process does, and return a function giving the lines written so far."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()

    def setup(fmt: str = "json", level: str = "INFO"):
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # configure may set it; restored after the test
        logs.configure(level, fmt)
        for handler in logging.getLogger().handlers:
            handler.setStream(stream)
        return lambda: stream.getvalue().splitlines()

    yield setup
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    logging.captureWarnings(False)


def test_json_lines_carry_extra_fields_and_exceptions(captured):
    lines = captured("json")
    log = logging.getLogger("embsvc.test")
    log.info("hello %s", "world", extra={"event": "greeting", "count": 3, "where": Path("/tmp")})
    try:
        raise ValueError("bad value")
    except ValueError:
        log.exception("it failed")
    first, second = (json.loads(line) for line in lines())
    assert first["message"] == "hello world" and first["level"] == "INFO" and first["logger"] == "embsvc.test"
    assert (first["event"], first["count"], first["where"]) == ("greeting", 3, "/tmp")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert isinstance(first["pid"], int)
    assert "request_id" not in first
    assert second["level"] == "ERROR" and "ValueError: bad value" in second["exception"]


def test_text_lines_carry_the_request_id(captured):
    lines = captured("text")
    log = logging.getLogger("embsvc.test")
    log.info("outside")
    token = logs.request_id.set("req-42")
    try:
        log.warning("inside")
    finally:
        logs.request_id.reset(token)
    outside, inside = lines()
    assert outside.endswith("embsvc.test: outside")
    assert inside.endswith(f"WARNING [{os.getpid()}] embsvc.test: inside request_id=req-42")


def test_warnings_become_log_lines(captured):
    lines = captured("json")
    import warnings

    warnings.warn("old API", DeprecationWarning, stacklevel=1)
    entry = json.loads(lines()[-1])
    assert entry["logger"] == "py.warnings" and "old API" in entry["message"]


def test_request_id_is_made_when_missing_and_echoed(client):
    app = client
    ids = [app.simulate_get("/health").headers["X-Request-ID"] for _ in range(3)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids)
    assert len(set(ids)) == 3


@pytest.mark.parametrize("given", ["abc-123", "nginx.4f2a:1", "a" * 128])
def test_a_plain_client_request_id_is_kept(client, given):
    app = client
    assert app.simulate_get("/health", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given


@pytest.mark.parametrize("given", ["a" * 129, "two words", "semi;colon", "ünïcode"])
def test_an_odd_client_request_id_is_replaced(client, given):
    app = client
    rid = app.simulate_get("/health", headers={"X-Request-ID": given}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)


@pytest.mark.parametrize(("method", "path", "headers", "status"), [
    ("POST", "/v1/embeddings", {}, 401),
    ("GET", "/nowhere", {}, 404),
    ("DELETE", "/health", {}, 405),
    ("POST", "/v1/embeddings", AUTH, 400),
])
def test_refused_requests_are_answered_with_the_id(client, method, path, headers, status):
    app = client
    result = app.simulate_request(method, path, headers={**headers, "X-Request-ID": "refused-1"}, body=b"{}")
    assert result.status_code == status
    assert result.headers["X-Request-ID"] == "refused-1"


def test_every_line_of_a_request_carries_its_id(client, engine, captured):
    app = client
    lines = captured("json")
    engine.fail_with = RuntimeError("the engine broke")  # logged by the 500 handler, with its traceback
    result = app.simulate_post("/v1/embeddings", json={"input": "x"}, headers={**AUTH, "X-Request-ID": "trace-me"})
    assert result.status_code == 500 and result.headers["X-Request-ID"] == "trace-me"
    entries = [json.loads(line) for line in lines()]
    errors = [e for e in entries if e["level"] == "ERROR"]
    assert errors and all(e["request_id"] == "trace-me" for e in errors)
    assert "the engine broke" in errors[0]["exception"]
    # The id does not outlive its request: the thread's next lines are clean.
    assert logs.request_id.get() is None
    logging.getLogger("embsvc.test").info("after")
    assert "request_id" not in json.loads(lines()[-1])


class _Response:
    def __init__(self) -> None:
        self.status, self.sent = "201 Created", 1234
        self.headers = [("Content-Type", "application/json"), ("X-Request-ID", "rid-77")]


def _environ(**extra: str) -> dict[str, str]:
    return {"REQUEST_METHOD": "POST", "RAW_URI": "/v1/embeddings?x=1&token=s3cret", "PATH_INFO": "/v1/embeddings",
            "QUERY_STRING": "x=1&token=s3cret", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.0.0.7",
            "HTTP_USER_AGENT": 'curl/8 "quoted"', **extra}


def _gunicorn_logger(fmt: str, level: str = "INFO") -> AccessLogger:
    cfg = Config()
    cfg.set("logconfig_dict", logs.dict_config(level, fmt))
    return AccessLogger(cfg)


def test_access_log_is_one_json_record_with_fields(captured):
    captured("json")
    logger = _gunicorn_logger("json")
    logging.getLogger().handlers[0].setStream(io.StringIO())  # gunicorn's set-up made a new handler
    stream = logging.getLogger().handlers[0].stream
    logger.access(_Response(), None, _environ(), timedelta(milliseconds=12, microseconds=500))
    entry = json.loads(stream.getvalue().splitlines()[-1])
    assert entry["logger"] == "gunicorn.access" and entry["event"] == "access"
    assert {k: entry[k] for k in ("method", "path", "query", "status", "bytes", "remote_addr", "request_id")} == {
        "method": "POST", "path": "/v1/embeddings", "query": "x=***&token=***", "status": 201, "bytes": 1234,
        "remote_addr": "10.0.0.7", "request_id": "rid-77"}
    assert entry["duration_ms"] == 12.5 and "engine_ms" not in entry  # no Server-Timing: no engine asked
    assert entry["user_agent"] == 'curl/8 "quoted"'  # kept as sent, not escaped twice
    assert entry["message"] == '10.0.0.7 "POST /v1/embeddings?x=***&token=*** HTTP/1.1" 201 1234 12.5ms'
    assert "s3cret" not in stream.getvalue()  # a token sent in the query never reaches the log
    timed = _Response()
    timed.headers.append(("Server-Timing", "engine;dur=8.25, queue;dur=1.50, passes;dur=6.00"))
    logger.access(timed, None, _environ(), timedelta(milliseconds=12, microseconds=500))
    entry = json.loads(stream.getvalue().splitlines()[-1])
    assert (entry["engine_ms"], entry["queue_ms"], entry["passes_ms"]) == (8.25, 1.5, 6.0)
    # gunicorn's own handlers are gone: one line per event, in one format, not two.
    assert logging.getLogger("gunicorn.access").handlers == [] == logging.getLogger("gunicorn.error").handlers


def test_access_log_text_line_and_level(captured):
    captured("text")
    logger = _gunicorn_logger("text")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    logger.access(_Response(), None, _environ(), timedelta(milliseconds=3))
    logger.info("Booting worker with pid: %s", 99)
    access, error_log = stream.getvalue().splitlines()
    assert access.endswith('gunicorn.access: 10.0.0.7 "POST /v1/embeddings?x=***&token=*** HTTP/1.1" 201 1234 3.0ms '
                           "request_id=rid-77")
    assert error_log.endswith("gunicorn.error: Booting worker with pid: 99")

    quiet = _gunicorn_logger("text", level="WARNING")
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    quiet.access(_Response(), None, _environ(), timedelta(milliseconds=3))
    assert stream.getvalue() == "", "LOG_LEVEL=WARNING silences the access log"


@pytest.mark.parametrize("query, logged", [
    ("api_key=abc&x=", "api_key=***&x="), ("flag", "flag"), ("a=1=2&&b", "a=***&&b")])
def test_query_values_are_redacted_names_kept(query, logged):
    assert redact(query) == logged


def test_transformers_warnings_can_join_our_format(captured):
    lines = captured("json")
    from transformers.utils import logging as transformers_logging

    from gpu_pool.model.load import adopt_transformers_logging

    adopt_transformers_logging()
    try:
        transformers_logging.get_logger("transformers.modeling_utils").warning("weights report")
    finally:
        transformers_logging.enable_default_handler()
        transformers_logging.disable_propagation()
    entry = json.loads(lines()[-1])
    assert entry["logger"] == "transformers.modeling_utils" and entry["message"] == "weights report"


# -- plain text: no terminal escapes, transformers' load report on one line --------------------------

# What transformers 5 logs when a checkpoint has weights the model does not use (utils/loading_report.py).
REPORT = ("\x1b[1mXLMRobertaModel LOAD REPORT\x1b[0m from: /models/bge-m3\n"
          "Key                 | Status     |  | \n"
          "--------------------+------------+--+-\n"
          "pooler.dense.bias   | \x1b[38;5;208mUNEXPECTED\x1b[0m |  | \n"
          "pooler.dense.weight | \x1b[38;5;208mUNEXPECTED\x1b[0m |  | \n"
          "encoder.layer.{0, 1}.x | \x1b[31mMISSING\x1b[0m | \n\n"
          "Notes:\n"
          "- \x1b[38;5;208mUNEXPECTED:\x1b[0m\t\x1b[3mcan be ignored when loading from different task/architecture; "
          "not ok if you expect identical arch.\x1b[0m\n"
          "- \x1b[31mMISSING:\x1b[0m\t\x1b[3mthose params were newly initialized because missing from the checkpoint."
          "\x1b[0m")


def test_json_lines_carry_no_terminal_escapes(captured):
    lines = captured("json")
    log = logging.getLogger("some.library")
    log.warning("\x1b[1mbold\x1b[0m and \x1b[31mred\x1b[0m", extra={"detail": "\x1b[2Kcleared"})
    try:
        raise ValueError("\x1b[33myellow\x1b[0m")
    except ValueError:
        log.exception("failed")
    text = "\n".join(lines())
    assert "\x1b" not in text and "\\u001b" not in text, text
    first, second = (json.loads(line) for line in lines())
    assert first["message"] == "bold and red" and first["detail"] == "cleared"
    assert "ValueError: yellow" in second["exception"]


@pytest.fixture
def transformers_logs(monkeypatch):
    """The engine hands transformers' records to the root handler (if transformers was imported
    in this test process, its logger keeps them to itself)."""
    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("transformers"), "handlers", [])


def test_the_load_report_is_one_readable_line(captured, transformers_logs):
    lines = captured("json")
    logging.getLogger("transformers.modeling_utils").warning(REPORT)
    (line,) = lines()
    message = json.loads(line)["message"]
    assert message == (
        "XLMRobertaModel load report from /models/bge-m3: UNEXPECTED pooler.dense.bias, pooler.dense.weight; "
        "MISSING encoder.layer.{0, 1}.x (UNEXPECTED: can be ignored when loading from different task/architecture; "
        "not ok if you expect identical arch. MISSING: those params were newly initialized because missing from "
        "the checkpoint.)")


def test_the_load_report_is_one_line_in_text_logs_too(captured, transformers_logs):
    lines = captured("text")
    logging.getLogger("transformers.modeling_utils").warning(REPORT)
    (line,) = lines()
    assert "XLMRobertaModel load report from /models/bge-m3: UNEXPECTED pooler.dense.bias" in line


def test_a_report_of_another_shape_still_takes_one_line():
    text = "Model LOAD REPORT from: x\nsomething\n\nelse"
    assert logs.one_line_report(text) == "Model LOAD REPORT from: x something else"


def test_a_record_written_past_logging_matches_the_one_through_it(captured):
    lines = captured("json")
    log = logging.getLogger("embsvc.test.fast")
    logs.write_info(log, "done", {"status": 200, "empty": None, "kind": "x"})  # the set-up's own: written directly
    collected: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = collected.append  # type: ignore[method-assign]
    log.addHandler(catcher)  # another handler on the way: through logging, which it sees
    try:
        logs.write_info(log, "done", {"status": 200, "empty": None, "kind": "x"})
    finally:
        log.removeHandler(catcher)
    direct, through = (json.loads(line) for line in lines())
    assert collected and collected[0].status == 200
    assert {k: v for k, v in direct.items() if k != "time"} == {k: v for k, v in through.items() if k != "time"}
    assert direct["message"] == "done" and direct["kind"] == "x" and "empty" not in direct
