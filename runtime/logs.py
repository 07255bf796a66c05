"""One logging set-up for the master, the web workers and the engines.

``LOG_FORMAT=json`` writes one JSON object a line: time, level, logger, pid,
message, and every extra field a call passed (``extra={...}``), such as the
access log's ``status`` or a download's ``total``. ``LOG_FORMAT=text`` is for
people reading a terminal.

The id of the request being served lives in a context variable, which the web
app's middleware sets for the length of a request. A filter on the handler
stamps it on every record, so that lines from libraries and from gunicorn carry
it as well as our own. The same ``dict_config`` serves ``logging.config`` in
every process and gunicorn's ``logconfig_dict``, so all lines of a server share
one format and one stream (stderr).
"""

from __future__ import annotations

import itertools
import logging
import logging.config
import os
import re
import time
from contextvars import ContextVar
from typing import Any, cast

import orjson

# No line shows the caller's file, thread or process name: the logging HOWTO's
# "Optimization" switches skip collecting them for every record (the access
# log writes one per request).
logging._srcfile = None
logging.logThreads = False
logging.logMultiprocessing = False

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# A terminal's escape sequences (colours, bold): libraries add them to their messages.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def plain(text: str) -> str:
    """``text`` without terminal escape sequences."""
    return _ANSI.sub("", text) if "\x1b" in text else text


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on records that do not carry one already."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            current = request_id.get()
            if current is not None:
                record.request_id = current
        return True


# A record's own attributes come first in its __dict__ (set by LogRecord.__init__), the extra
# fields after them: only the tail needs a look (the access log writes a record per request).
_OWN_ATTRIBUTES = len(vars(logging.makeLogRecord({})))


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    return {key: value for key, value in itertools.islice(vars(record).items(), _OWN_ATTRIBUTES, None)
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and value is not None}


class _UtcSeconds:
    """A record's time to the second, formatted once per second (records come in bursts)."""

    def __init__(self) -> None:
        self._last = (-1, "")  # one tuple, replaced whole: threads never see a second with another's text

    def __call__(self, created: float) -> str:
        second, text = self._last
        if int(created) != second:
            second = int(created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._last = (second, text)
        return text


class LoadReportFilter(logging.Filter):
    """transformers' weight-loading report is a coloured table over many lines; it becomes one
    line: ``XLMRobertaModel load report from /models/x: UNEXPECTED pooler.dense.bias,
    pooler.dense.weight (UNEXPECTED: can be ignored when ...)``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("transformers") and "LOAD REPORT" in str(record.msg):
            record.msg, record.args = one_line_report(plain(record.getMessage())), None
        return True


def one_line_report(text: str) -> str:
    """The report's title, its keys by status, and its notes, on one line."""
    lines = [line.strip() for line in text.splitlines()]
    title = lines[0].replace(" LOAD REPORT from:", " load report from")
    keys: dict[str, list[str]] = {}
    for row in _table_rows(lines):
        cells = [cell.strip() for cell in row.split("|")]
        if len(cells) >= 2 and cells[0]:
            details = " ".join(c for c in cells[2:] if c)
            keys.setdefault(cells[1], []).append(f"{cells[0]} ({details})" if details else cells[0])
    notes = [line[2:].replace("\t", " ") for line in lines if line.startswith("- ")]
    if not keys:  # not the table this expects: the text as it is, on one line
        return " ".join(line for line in lines if line)
    found = "; ".join(f"{status} {', '.join(names)}" for status, names in keys.items())
    return f"{title}: {found}" + (f" ({' '.join(notes)})" if notes else "")


def _table_rows(lines: list[str]) -> list[str]:
    """The rows under the table's ``---+---`` rule, up to the first blank line."""
    rule = next((i for i, line in enumerate(lines) if line.startswith("-") and "+" in line), None)
    if rule is None:
        return []
    rows = []
    for line in lines[rule + 1:]:
        if not line:
            break
        rows.append(line)
    return rows


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; plain text, without terminal escapes."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _UtcSeconds()

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(record.created, record.levelname, record.name, record.process, record.getMessage(),
                         extra_fields(record), exception)

    def line(self, created: float, level: str, logger: str, pid: int | None, message: str,
             fields: dict[str, object], exception: str | None = None) -> str:
        """A record's line from its parts: ``fields`` are its extra ones (None values left out)."""
        entry: dict[str, object] = {
            "time": f"{self._seconds(created)}.{int(created * 1000) % 1000:03d}Z",
            "level": level,
            "logger": logger,
            "pid": pid,
            "message": plain(message),
        }
        entry.update((k, plain(v) if isinstance(v, str) else v) for k, v in fields.items() if v is not None)
        if exception is not None:
            entry["exception"] = plain(exception)
        # default=str: an odd extra value (a Path, an enum) must not cost the line.
        return orjson.dumps(entry, default=str).decode()


def write_info(logger: logging.Logger, message: str, fields: dict[str, object]) -> None:
    """``logger.info(message, extra=fields)``, in the same JSON line, without a LogRecord, its
    filters and its handler's call chain where the set-up is this module's own (``LOG_FORMAT=json``:
    the root's one handler, nothing else on the way; its filters have nothing to add to a record that
    carries its request id): the access log writes one record per request, and that chain was most
    of its cost. Any other set-up goes through logging."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _own_json_handler(logger)
    if handler is None:
        logger.info(message, extra=fields)
        return
    formatter = cast("JsonFormatter", handler.formatter)
    line = formatter.line(time.time(), "INFO", logger.name, os.getpid(), message, fields)
    with handler.lock:  # type: ignore[union-attr]  # a Handler's lock exists once it is made
        handler.stream.write(line + handler.terminator)
        handler.stream.flush()


def _own_json_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The root's handler, where a record of ``logger`` reaches only it and it is this module's JSON one."""
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    handlers = logging.root.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if (type(handler) is not logging.StreamHandler or not isinstance(handler.formatter, JsonFormatter)
            or handler.level > logging.INFO):
        return None
    return handler


class TextFormatter(logging.Formatter):
    """The classic line, with the request id after the message when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        rid = getattr(record, "request_id", None)
        return f"{line} request_id={rid}" if rid else line


def dict_config(level: str = "INFO", fmt: str = "json") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of every process; gunicorn takes it as ``logconfig_dict``."""
    level = level.upper()
    # gunicorn's own loggers hand their records to the root handler, so that its
    # lines (and the access log) share the format. LOG_LEVEL=WARNING also
    # silences the access log, whose lines are INFO.
    gunicorn_logger = {"level": level, "handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}, "load_report": {"()": LoadReportFilter}},
        "formatters": {"service": {"()": JsonFormatter if fmt == "json" else TextFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "service", "filters": ["request_id", "load_report"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": gunicorn_logger, "gunicorn.access": dict(gunicorn_logger)},
    }


def configure(level: str = "INFO", fmt: str = "json") -> None:
    logging.config.dictConfig(dict_config(level, fmt))
    # Library warnings (warnings.warn) would otherwise be bare lines among the JSON.
    logging.captureWarnings(True)
    if fmt == "json":
        # Terminal progress bars (transformers' "Loading weights") are not log
        # lines. Set before the engine imports transformers, which reads it once;
        # the model download logs its progress through ``download_progress``.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
