"""Every failure as {"success": false, "message": "..."} with its HTTP status.

Never HTML (Werkzeug's default error pages are HTML), never a traceback, never a token:
- ApiError: our own refusals (400, 401, 403), message as given;
- HTTPException: 404, 405, ... from routing, message from the status name;
- database unreachable (OperationalError, a dropped connection, an exhausted pool): 503;
- anything else: 500 with a fixed message; the details go to the log only.

Log lines about errors carry exception types, the driver's first message line and code
frames (no local values), with the request's access token cut out wherever it appears:
SQLAlchemy's own error text lists statement parameters, and psycopg2 interpolates them
into the SQL it reports, so the token lookup's parameter could otherwise reach the log.
"""
from __future__ import annotations

import logging
import traceback

from flask import Flask, g, has_request_context, jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, MethodNotAllowed

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


def register(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    # Exception covers the database errors too; _unexpected tells them apart, so that
    # one rule decides 503 versus 500 wherever the error comes from.
    app.register_error_handler(Exception, _unexpected)
