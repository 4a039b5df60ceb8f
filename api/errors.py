"""Every failure as {"success": false, "message": "..."} with its HTTP status.

Never HTML (Werkzeug's default error pages are HTML), never a traceback, never a token:
- ApiError: our own refusals (400, 401, 403), message as given;
- shared.queries.Unanswerable: a view the summary rows cannot answer exactly: 400;
- HTTPException: 404, 405, ... from routing, message from the status name;
- database unreachable (OperationalError, a dropped connection, an exhausted pool): 503;
- anything else: 500 with a fixed message; the details go to the log only;
- Flask's automatic OPTIONS answer (an empty text/html body): the same in JSON;
- under gunicorn, the refusals gunicorn makes itself before the app sees a request (a
  header or request line too large, a malformed header: 400, 414, 431) are JSON too:
  `register` replaces gunicorn's HTML error writer in the worker process.

Log lines about errors carry exception types, the driver's first message line and code
frames (no local values), with the request's access token cut out wherever it appears:
SQLAlchemy's own error text lists statement parameters, and psycopg2 interpolates them
into the SQL it reports, so the token lookup's parameter could otherwise reach the log.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from typing import Any

from flask import Flask, g, has_request_context, jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from shared.queries import Unanswerable

log = logging.getLogger("usage_stats.api")


class ApiError(Exception):
    """A refusal the client caused: `status` and a message safe to show."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def failure(status: int, message: str, headers: dict | None = None):
    response = jsonify(success=False, message=message)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def redact(text: str) -> str:
    """`text` without the current request's access token in it."""
    token = g.get("access_token") if has_request_context() else None
    if token:
        text = text.replace(token, "[redacted]")
    return text


def _where() -> str:
    return f"{request.method} {request.path}" if has_request_context() else "-"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0]) if text else ""


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached (or not now): worth a 503 and a retry."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def _api_error(e: ApiError):
    return failure(e.status, e.message)


def _unanswerable(e: Unanswerable):
    return failure(400, str(e))


def _http_error(e: HTTPException):
    headers = {}
    message = (e.name or "error").lower()
    if isinstance(e, MethodNotAllowed) and e.valid_methods:
        allowed = ", ".join(sorted(e.valid_methods))
        headers["Allow"] = allowed
        message = f"method not allowed; allowed: {allowed}"
    return failure(e.code or 500, message, headers)


def _unavailable(e: Exception):
    orig = getattr(e, "orig", None) or e
    log.warning("database unavailable on %s: %s: %s", _where(), type(orig).__name__, _first_line(orig))
    return failure(503, "database unavailable, try again later", {"Retry-After": "5"})


def _unexpected(e: Exception):
    if isinstance(e, HTTPException):  # reached only if Flask passed one through
        return _http_error(e)
    if is_unavailable(e):
        return _unavailable(e)
    orig = getattr(e, "orig", None)
    kind = type(e).__name__ + (f" ({type(orig).__name__})" if orig is not None else "")
    # Frames only: format_tb shows code lines, never exception text or local values.
    frames = redact("".join(traceback.format_tb(e.__traceback__)))
    log.error("internal error on %s: %s: %s\n%s", _where(), kind, _first_line(orig or e), frames.rstrip())
    return failure(500, "internal server error")


def ensure_log_output() -> None:
    """gunicorn sets up only its own loggers; without a handler of ours, these lines
    would reach stderr through logging.lastResort, bare and without a time. Whoever
    configured logging already (the CLI, pytest) keeps their setup."""
    if logging.getLogger().handlers or log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _json_options(response):
    # Flask answers OPTIONS itself with an empty text/html body and the Allow header.
    if (
        request.method == "OPTIONS"
        and response.status_code == 200
        and response.mimetype == "text/html"
        and not response.get_data()
    ):
        allowed = response.headers.get("Allow", "")
        answer = jsonify(success=True, message=f"allowed: {allowed}")
        answer.headers["Allow"] = allowed
        return answer
    return response


def gunicorn_write_error(sock, status_int, reason, mesg):
    """gunicorn.util.write_error, in the failure shape. The message is the status's
    reason only: gunicorn's detail can quote the request line or a header's value."""
    body = json.dumps({"success": False, "message": str(reason).lower()}).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    from gunicorn import util

    util.write_nonblock(sock, head + body)


def _json_gunicorn_errors() -> None:
    gunicorn_util: Any = sys.modules.get("gunicorn.util")
    if gunicorn_util is not None and gunicorn_util.write_error is not gunicorn_write_error:
        gunicorn_util.write_error = gunicorn_write_error


def register(app: Flask) -> None:
    _json_gunicorn_errors()  # only when running under gunicorn (it is imported then)
    app.after_request(_json_options)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(Unanswerable, _unanswerable)
    app.register_error_handler(HTTPException, _http_error)
    # Exception covers the database errors too; _unexpected tells them apart, so that
    # one rule decides 503 versus 500 wherever the error comes from.
    app.register_error_handler(Exception, _unexpected)
