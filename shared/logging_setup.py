"""Log output for the API, the worker and the CLI: plain text by default, one JSON
object per line with LOG_FORMAT=json.

Every line goes through two filters, whichever logger wrote it:

- `escape_controls` makes control characters visible: C0 (CR, LF, ESC, NUL, ...), DEL,
  C1 and the Unicode line and paragraph separators become `\\r`, `\\n`, `\\x1b`, `\\u2028`
  and so on; a backslash becomes `\\\\`, so that an escape is never what a client
  typed. A field that comes from a client (a request path, say) can therefore neither
  start a forged line in the log nor drive the terminal that shows it. The same
  escaped text goes into both formats: the JSON `message` reads as the plain line does.
  A traceback keeps its line breaks; in plain text its lines after the first are
  indented with `CONTINUATION`, so that only a record's first line starts with `[`.
- `redact` cuts out anything that looks like a secret:
  - the current request's access token (the API registers a source for it, see
    `add_secret_source`), wherever it appears;
  - `Bearer <...>` and `Authorization: ...` fragments;
  - passwords in URLs (`scheme://user:password@host`).
  So no token reaches a log line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any

FORMATS = ("plain", "json")
PLAIN_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
# Starts every line of a plain record after its first (traceback and stack lines).
CONTINUATION = "  | "

# Fields of a LogRecord that are not `extra=` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_BEARER = re.compile(r"(?i)(bearer\s+|authorization[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+")
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s]+@")

# C0, DEL, C1, LINE SEPARATOR, PARAGRAPH SEPARATOR: every character str.splitlines()
# breaks on is among them.
# The backslash too, so that an escape in the log is never what a client typed: a
# literal "\x1b" in a path is logged as "\\x1b", an ESC as "\x1b".
_CONTROL = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\\\\\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}

_secret_sources: list[Callable[[], str | None]] = []


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control character written as a visible escape (`\\n`,
    `\\x1b`, `\\u2028`); with `keep_newlines`, LF stays a line break (tracebacks)."""
    return (_CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL).sub(_escape_one, text)


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


def _escaped_value(value: object) -> object:
    """A JSON-ready copy of an `extra=` value with every string in it escaped."""
    if isinstance(value, str):
        return escape_controls(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {escape_controls(str(k)): _escaped_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped_value(v) for v in value]
    return escape_controls(str(value))


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's exception as the standard formatter writes it ("" without one)."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or ""


def _stack_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    return formatter.formatStack(record.stack_info) if record.stack_info else ""


class PlainFormatter(logging.Formatter):
    """`PLAIN_FORMAT` on one line with control characters escaped; a traceback below it
    on lines that start with `CONTINUATION`."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        lines = [escape_controls(self.formatMessage(record))]
        for text in (_exception_text(self, record), _stack_text(self, record)):
            if text:
                lines += [CONTINUATION + line for line in escape_controls(text, keep_newlines=True).split("\n")]
        return redact("\n".join(lines))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the record's `extra=`
    fields, and the exception (type and text) if any. Strings are escaped as in the
    plain format (a traceback keeps its line breaks, which JSON writes as `\\n`), so a
    record is always exactly one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": escape_controls(record.levelname.lower()),
            "logger": escape_controls(record.name),
            "message": escape_controls(record.getMessage()),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[escape_controls(key)] = _escaped_value(value)
        for key, text in (("exc_info", _exception_text(self, record)), ("stack_info", _stack_text(self, record))):
            if text:
                out[key] = escape_controls(text, keep_newlines=True)
        # ensure_ascii=False keeps non-ASCII text readable; every character JSON or a
        # line splitter could trip over was escaped above.
        return redact(json.dumps(out, ensure_ascii=False, default=str))


def make_handler(fmt: str, stream: IO[str] | None = None) -> logging.Handler:
    handler: logging.StreamHandler[Any] = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler._usage_stats = True  # type: ignore[attr-defined]
    return handler


def configure(
    fmt: str = "plain", level: int = logging.INFO, stream: IO[str] | None = None, *, force: bool = False
) -> None:
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
