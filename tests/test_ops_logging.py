"""LOG_FORMAT: plain text by default, one JSON object per line with json; one line per
request and per tick, whatever control characters a client puts in its path; never a
token in any line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from api import create_app
from shared import logging_setup
from shared import models as m
from shared.config import ConfigError, Settings
from shared.ops import run_rollup
from tests.api_support import add_user


@pytest.fixture
def capture():
    """Route the root logger through our handler into a buffer; restore afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()

    def use(fmt):
        logging_setup.configure(fmt, stream=buf)
        return buf

    yield use
    for h in list(root.handlers):
        if getattr(h, "_usage_stats", False):
            root.removeHandler(h)
    for h in saved[0]:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(saved[1])


def _lines(buf):
    return [line for line in buf.getvalue().splitlines() if line.strip()]


def test_log_format_setting():
    assert Settings.from_env({}).log_format == "plain"
    assert Settings.from_env({"LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "xml"})


def test_json_one_line_per_request_without_the_token(sqlite_engine, capture):
    app = create_app(Settings(database_url="sqlite://", log_format="json"), engine=sqlite_engine)
    buf = capture("json")
    token = add_user(sqlite_engine, 1, "alice")
    client = app.test_client()
    client.get(
        "/api/data/self?start_timestamp=0&end_timestamp=3600",
        headers={"Authorization": f"Bearer {token}", "New-Api-User": "1"},
    )
    client.get("/api/data/self", headers={"Authorization": f"Bearer {token}", "New-Api-User": "2"})  # 401
    client.get("/api/data/", headers={"Authorization": token, "New-Api-User": "1"})  # 403
    client.get("/nowhere")

    lines = _lines(buf)
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    requests = [r for r in records if r.get("event") == "request"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("GET", "/api/data/self", 200),
        ("GET", "/api/data/self", 401),
        ("GET", "/api/data/", 403),
        ("GET", "/nowhere", 404),
    ]
    for r in requests:
        assert r["logger"] == "usage_stats.access" and r["level"] == "info"
        assert isinstance(r["duration_ms"], float) and r["ts"].endswith("Z")
    assert requests[0]["route"] == "/api/data/self" and requests[3]["route"] == "unmatched"
    assert "start_timestamp" not in buf.getvalue()  # the path, not the query string
    assert token not in buf.getvalue()


def test_a_token_inside_a_log_message_is_cut_out(sqlite_engine, capture):
    app = create_app(Settings(database_url="sqlite://"), engine=sqlite_engine)
    token = add_user(sqlite_engine, 1, "alice")

    @app.get("/leaky")
    def leaky():
        from flask import g

        g.access_token = token
        logging.getLogger("usage_stats.test").warning("oops %s and Bearer %s", token, "abc123secret")
        logging.getLogger("usage_stats.test").warning("url postgresql://usage:hunter2@db:5432/usage")
        return "ok"

    for fmt in ("json", "plain"):
        buf = capture(fmt)
        app.test_client().get("/leaky")
        text = buf.getvalue()
        assert token not in text and "abc123secret" not in text and "hunter2" not in text
        assert "[redacted]" in text


def test_plain_is_the_default_and_one_line_per_tick(sqlite_engine, capture):
    buf = capture(Settings.from_env({}).log_format)
    with sqlite_engine.begin() as conn:
        conn.execute(
            sa.insert(m.logs),
            [{"user_id": 1, "created_at": int(time.time()), "type": m.LOG_CONSUME, "model_name": "x", "quota": 1}],
        )
    run_rollup(sqlite_engine, Settings(database_url="sqlite://"), wait=True)
    lines = [line for line in _lines(buf) if "rollup tick" in line]
    assert len(lines) == 1
    assert lines[0].startswith("[") and "usage_stats.rollup: rollup tick: logs=1" in lines[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])


def test_json_one_line_per_tick(sqlite_engine, capture):
    buf = capture("json")
    run_rollup(sqlite_engine, Settings(database_url="sqlite://"), wait=True)
    run_rollup(sqlite_engine, Settings(database_url="sqlite://"), wait=True)
    ticks = [json.loads(line) for line in _lines(buf) if "rollup tick" in line]
    assert len(ticks) == 2
    assert all(t["logger"] == "usage_stats.rollup" and t["message"].startswith("rollup tick: logs=0") for t in ticks)


def test_an_exception_stays_on_one_json_line(capture):
    buf = capture("json")
    try:
        raise RuntimeError("first\nsecond")
    except RuntimeError:
        logging.getLogger("usage_stats.test").exception("failed")
    lines = _lines(buf)
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert "RuntimeError" in record["exc_info"] and record["level"] == "error"


def test_cli_logs_json(tmp_path):
    env = dict(os.environ, DATABASE_URL=f"sqlite:///{tmp_path / 'u.db'}", LOG_FORMAT="json")
    for cmd in (["db", "upgrade"], ["rollup"]):
        p = subprocess.run(
            [sys.executable, "-m", "shared.cli", *cmd], env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert p.returncode == 0, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert any(json.loads(line)["message"].startswith("rollup tick") for line in lines)


# CR LF (a forged line), ESC (terminal colours), NUL, NEL (C1), DEL, TAB, and the Unicode
# line separator, in the path of a request; werkzeug decodes them into request.path.
FORGED_PATH = "/x%0d%0a[2026-01-01 00:00:00,000] [1] [INFO] usage_stats.access: GET /forged 200%1b[31mred%00nul%c2%85%7f%09%e2%80%a8end"
FORGED_ESCAPED = "/x\\r\\n[2026-01-01 00:00:00,000] [1] [INFO] usage_stats.access: GET /forged 200\\x1b[31mred\\x00nul\\x85\\x7f\\t\\u2028end"


def _forged_request_lines(sqlite_engine, capture, fmt):
    """What one request to FORGED_PATH writes to the log, as str.splitlines() cuts it
    (which breaks on more characters than a newline: CR, NEL, U+2028 ...)."""
    app = create_app(Settings(database_url="sqlite://", log_format=fmt), engine=sqlite_engine)
    buf = capture(fmt)
    assert app.test_client().get(FORGED_PATH).status_code == 404
    text = buf.getvalue()
    for char in ("\r", "\x1b", "\x00", "\x85", "\x7f", "\t", "\u2028"):
        assert char not in text
    return text.splitlines()


def test_control_characters_in_a_path_are_escaped_in_the_plain_line(sqlite_engine, capture):
    lines = _forged_request_lines(sqlite_engine, capture, "plain")
    assert len(lines) == 1
    assert lines[0].startswith("[") and "usage_stats.access: GET " in lines[0]
    assert f"GET {FORGED_ESCAPED} 404 " in lines[0]


def test_control_characters_in_a_path_are_escaped_in_the_json_line(sqlite_engine, capture):
    lines = _forged_request_lines(sqlite_engine, capture, "json")
    assert len(lines) == 1
    record = json.loads(lines[0])
    # The field and the message carry the same escaped text as the plain line.
    assert record["path"] == FORGED_ESCAPED
    assert record["message"].startswith(f"GET {FORGED_ESCAPED} 404 ")
    assert record["event"] == "request" and record["status"] == 404


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_a_typed_escape_is_not_taken_for_an_escaped_character(sqlite_engine, fmt, capture):
    # A client that types the four characters \x1b must not pass for one that sent ESC.
    app = create_app(Settings(database_url="sqlite://", log_format=fmt), engine=sqlite_engine)
    buf = capture(fmt)
    assert app.test_client().get("/a%5Cx1b/b%1b").status_code == 404
    lines = _lines(buf)
    assert len(lines) == 1
    path = json.loads(lines[0])["path"] if fmt == "json" else lines[0]
    assert "/a\\\\x1b/b\\x1b" in path


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_a_forged_path_still_loses_its_token(sqlite_engine, capture, fmt):
    app = create_app(Settings(database_url="sqlite://", log_format=fmt), engine=sqlite_engine)
    token = add_user(sqlite_engine, 1, "alice")

    @app.before_request
    def authenticated():  # as the API's auth does: the request's token is known
        from flask import g

        g.access_token = token

    buf = capture(fmt)
    response = app.test_client().get(f"/echo/{token}%0d%0aBearer%20abc123secret%1b[0m")
    assert response.status_code == 404
    lines = _lines(buf)
    assert len(lines) == 1
    assert token not in buf.getvalue() and "abc123secret" not in buf.getvalue()
    assert "/echo/[redacted]\\r\\nBearer [redacted]" in (json.loads(lines[0])["path"] if fmt == "json" else lines[0])


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_extra_fields_and_messages_are_escaped_alike(capture, fmt):
    buf = capture(fmt)
    logging.getLogger("usage_stats.test").warning(
        "user %s", "eve\nFAKE", extra={"event": "x\x1by", "nested": {"k\r": ["a\u2029b", 1]}}
    )
    lines = _lines(buf)
    assert len(lines) == 1
    if fmt == "plain":
        assert lines[0].endswith("usage_stats.test: user eve\\nFAKE")
    else:
        record = json.loads(lines[0])
        assert record["message"] == "user eve\\nFAKE"
        assert record["event"] == "x\\x1by" and record["nested"] == {"k\\r": ["a\\u2029b", 1]}


def test_a_plain_traceback_cannot_start_a_record(capture):
    buf = capture("plain")
    try:
        raise ValueError("bad input\n[2026-01-01 00:00:00,000] [1] [INFO] forged: yes\x1b[2J")
    except ValueError:
        logging.getLogger("usage_stats.test").exception("failed")
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[") and lines[0].endswith("usage_stats.test: failed")
    assert len(lines) > 2 and all(line.startswith(logging_setup.CONTINUATION) for line in lines[1:])
    assert "\x1b" not in buf.getvalue() and any("\\x1b[2J" in line for line in lines)
