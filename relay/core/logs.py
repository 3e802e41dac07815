"""Structured logs: one JSON object per line, with the request id of the RPC being served.

For people at a terminal (stderr is a TTY and ``RELAY_LOG_FORMAT`` is unset: format ``auto``), the same
records as readable lines instead: time, level, logger, message, then the allowed fields as ``key=value``.
``RELAY_LOG_FORMAT=json`` or ``text`` chooses one outright.

Job params and results are never passed to a logger; the formatter also keeps only a fixed set of
``extra`` fields, so a careless ``extra={"params": ...}`` cannot leak them either.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

#: The ``extra`` fields a log line may carry; anything else is dropped.
ALLOWED_EXTRA = (
    "job_id",
    "workspace_id",
    "method",
    "code",
    "duration_ms",
    "fields",
    "backfill_id",
    "stage",
    "peer",
    "listen",
    "reason",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            line["request_id"] = rid
        for name in ALLOWED_EXTRA:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


_LEVEL_COLOURS = {"DEBUG": "2", "INFO": "32", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}


class ConsoleFormatter(logging.Formatter):
    """One readable line per record, for a terminal: the same fields as the JSON, the same filter."""

    def __init__(self, colour: bool = False):
        super().__init__()
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).astimezone().strftime("%H:%M:%S.%f")[:-3]
        level = f"{record.levelname:<7}"
        if self._colour:
            level = f"\x1b[{_LEVEL_COLOURS.get(record.levelname, '0')}m{level}\x1b[0m"
        fields = []
        rid = request_id.get()
        if rid:
            fields.append(f"request_id={rid}")
        for name in ALLOWED_EXTRA:
            if name in record.__dict__:
                value = record.__dict__[name]
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                fields.append(f"{name}={text}")
        line = f"{when} {level} {record.name}: {record.getMessage()}"
        if fields:
            line += "  " + " ".join(fields)
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_format(fmt: str, stream: object = None) -> str:
    """``json`` or ``text``; ``auto`` (or empty) is text when ``stream`` (stderr) is a terminal."""
    fmt = (fmt or "auto").strip().lower()
    if fmt in ("json", "text"):
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return "text" if isatty is not None and isatty() else "json"
    except ValueError:  # a closed stream
        return "json"


def configure(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if resolve_format(fmt, sys.stderr) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ConsoleFormatter(colour=resolve_format("auto", sys.stderr) == "text"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
