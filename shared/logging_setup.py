"""Log output for the API, the worker and the CLI: plain text by default, one JSON
object per line with LOG_FORMAT=json.

Every line goes through `Redactor`, which cuts out anything that looks like a secret:
- the current request's access token (the API registers a source for it, see
  `add_secret_source`), wherever it appears;
- `Bearer <...>` and `Authorization: ...` fragments;
- passwords in URLs (`scheme://user:password@host`).
So no token reaches a log line, whichever logger wrote it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable

FORMATS = ("plain", "json")
PLAIN_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"

# Fields of a LogRecord that are not `extra=` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_BEARER = re.compile(r"(?i)(bearer\s+|authorization[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+")
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s]+@")

_secret_sources: list[Callable[[], str | None]] = []


def add_secret_source(source: Callable[[], str | None]) -> None:
    """`source()` returns a secret to cut out of every line (or None); e.g. the API's
    current access token."""
    if source not in _secret_sources:
        _secret_sources.append(source)


def redact(text: str) -> str:
    for source in _secret_sources:
        try:
            secret = source()
        except Exception:
            secret = None
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _BEARER.sub(lambda m: m.group(1) + "[redacted]", text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + "[redacted]@", text)


class PlainFormatter(logging.Formatter):
    def __init__(self):
        super().__init__(PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the record's `extra=`
    fields, and the exception (type and text) if any. Newlines inside the message are
    escaped by JSON, so a record is always exactly one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None), dict, list)) else str(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, ensure_ascii=False, default=str))


def make_handler(fmt: str, stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler._usage_stats = True  # type: ignore[attr-defined]
    return handler


def configure(fmt: str = "plain", level: int = logging.INFO, stream=None, *, force: bool = False) -> None:
    """Send every logger's lines through one handler on the root logger, in `fmt`.

    Replaces a handler this function installed before; keeps other handlers unless
    `force` (pytest's capture handlers, for instance, stay)."""
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    for h in list(root.handlers):
        if force or getattr(h, "_usage_stats", False):
            root.removeHandler(h)
    root.addHandler(make_handler(fmt, stream))
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # gunicorn's error log and Celery's own loggers propagate to root; its access log is
    # replaced by our one line per request (api/ops.py).
    for name in ("gunicorn.error",):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
