"""The worker end to end: a real Celery worker and beat process, the real broker.

- On PostgreSQL and Redis (integration): beat-driven ticks roll up logs, late and
  old-timestamped ones included; the reaggregate task runs through the broker.
- On the embedded default (SQLite file, SQLite broker): `usage-stats up --demo`
  seeds, rolls up by itself, and stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
import sqlalchemy as sa

from shared import models as m
from shared.db import make_engine
from tests.conftest import REDIS_URL

EXPECTED = sa.text(
    "SELECT user_id, created_at - created_at % 3600 AS hour, model_name, count(*) AS n, sum(quota) AS quota "
    "FROM logs WHERE type = 2 GROUP BY user_id, created_at - created_at % 3600, model_name ORDER BY 1, 2, 3"
)
ACTUAL = sa.text("SELECT user_id, created_at, model_name, count, quota FROM hourly_usage ORDER BY 1, 2, 3")


def _rows(engine, query):
    try:
        with engine.connect() as conn:
            return [tuple(int(v) if not isinstance(v, str) else v for v in r) for r in conn.execute(query)]
    except sa.exc.OperationalError:
        return []  # `up` is still creating the schema


def _wait_for_exact(engine, timeout=60.0, proc=None):
    """Poll until hourly_usage equals the GROUP BY over raw consume logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"worker exited early with code {proc.returncode}")
        expected = _rows(engine, EXPECTED)
        if expected and _rows(engine, ACTUAL) == expected:
            return expected
        time.sleep(0.3)
    pytest.fail(
        f"rollup did not converge within {timeout}s: expected {len(_rows(engine, EXPECTED))} rows, "
        f"have {len(_rows(engine, ACTUAL))}"
    )


def _log(user_id, created_at, model="gpt-4o", quota=100, kind=m.LOG_CONSUME):
    return {
        "user_id": user_id,
        "username": f"u{user_id}",
        "created_at": created_at,
        "type": kind,
        "model_name": model,
        "quota": quota,
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_url():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.mark.integration
def test_beat_driven_ticks_on_postgres_and_redis(pg_engine, pg_url, redis_url, tmp_path):
    env = dict(os.environ, DATABASE_URL=pg_url, CELERY_BROKER_URL=redis_url, ROLLUP_INTERVAL_SECONDS="1")
    now = int(time.time())
    with pg_engine.begin() as conn:
        conn.execute(sa.insert(m.logs), [_log(u, now - 3600 * h) for u in (1, 2, 3) for h in range(5)])
        conn.execute(sa.insert(m.logs), [_log(1, now, kind=m.LOG_ERROR)])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            "--beat",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--schedule",
            str(tmp_path / "beat-schedule"),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = _wait_for_exact(pg_engine, proc=proc)
        assert sum(r[3] for r in first) == 15

        # A log with a week-old timestamp lands in a bucket rolled up long ago, and a
        # late commit: its id was taken before a later log that committed first.
        with pg_engine.connect() as late:
            late_tx = late.begin()
            late.execute(sa.insert(m.logs), [_log(2, now - 7 * 86400, quota=7)])
            with pg_engine.begin() as conn:
                conn.execute(sa.insert(m.logs), [_log(3, now, quota=11)])
            time.sleep(2.5)  # let beat tick while the first transaction is still open
            late_tx.commit()
        second = _wait_for_exact(pg_engine, proc=proc)
        assert sum(r[3] for r in second) == 17

        # The reaggregate task through the real broker: idempotent, totals unchanged.
        from shared.config import Settings
        from shared.jobs import REAGGREGATE_TASK
        from worker import make_celery

        client = make_celery(Settings.from_env(env))
        result = client.send_task(REAGGREGATE_TASK, args=[now - 8 * 86400, now + 3600, None])
        summary = result.get(timeout=60)
        assert summary["logs"] == 17
        assert _rows(pg_engine, ACTUAL) == _rows(pg_engine, EXPECTED)
    finally:
        _stop(proc)
    output = proc.stdout.read()
    assert "rollup tick: logs=" in output
    assert "Traceback" not in output


@pytest.mark.integration  # runs a real worker, beat and API
def test_up_on_the_embedded_default(tmp_path):
    """The README's first command: everything on SQLite, no server needed. It says what it
    did to the schema, rolls up at once (before the worker starts), and prints a link to
    the chart page carrying the demo user's token, once the API answers."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
    }
    env["ROLLUP_INTERVAL_SECONDS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--demo", "--days", "2", "--port", "18765"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def printed(prefix):
        return next((line.strip() for line in list(lines) if line.startswith(prefix)), None)

    try:
        engine = make_engine(f"sqlite:///{tmp_path / 'usage-stats.db'}")
        deadline = time.monotonic() + 60
        while not (tmp_path / "usage-stats.db").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = _wait_for_exact(engine, proc=proc)
        assert sum(r[3] for r in rows) > 0

        deadline = time.monotonic() + 60
        while printed("chart page:") is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        link = printed("chart page:")
        assert link is not None, "".join(lines)
        url = urllib.parse.urlsplit(link.removeprefix("chart page:").strip())
        assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:18765", "/")
        fragment = urllib.parse.parse_qs(url.fragment)
        with engine.connect() as conn:
            user = conn.execute(sa.select(m.users).where(m.users.c.access_token == fragment["token"][0])).one()
            consume = conn.execute(sa.select(sa.func.count()).where(m.logs.c.type == m.LOG_CONSUME)).scalar()
        assert fragment["user"] == [str(user.id)] and user.role < m.ROLE_ADMIN
        # The link's credentials open the user's own data (what the page asks the API).
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            "http://127.0.0.1:18765/api/data/self?granularity=day",
            headers={"Authorization": f"Bearer {fragment['token'][0]}", "New-Api-User": fragment["user"][0]},
        )
        with opener.open(request, timeout=10) as response:
            assert response.status == 200 and json.load(response)["data"]
        # `up` rolled up before the worker started, all the demo logs at once.
        assert f"rolled up at start: {consume} consume logs in " in "".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    reader.join(10)
    output = "".join(lines)
    assert code == 0, output
    assert "schema created (revision " in output
    assert "stopped" in output
    assert "Traceback" not in output
