"""Retention (shared.retention), on SQLite and PostgreSQL: off by default; hourly rows
past RETAIN_HOURLY_DAYS go, daily rows stay; raw logs past RETAIN_LOGS_DAYS go only once
counted (at or below the watermark, in no gap)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from shared import aggregation as agg
from shared import models as m
from shared.config import Settings
from shared.ops import run_retention, run_rollup
from shared.retention import check_reaggregate_range

D = 86400
NOW = 1_750_000_000 - 1_750_000_000 % D + 12 * 3600  # noon UTC


def _log(user_id, created_at, quota=100, kind=m.LOG_CONSUME, **extra):
    return {
        "user_id": user_id,
        "username": f"u{user_id}",
        "created_at": created_at,
        "type": kind,
        "model_name": "gpt-4o",
        "quota": quota,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        **extra,
    }


def _count(engine, table, where=None):
    q = sa.select(sa.func.count()).select_from(table)
    if where is not None:
        q = q.where(where)
    with engine.connect() as conn:
        return conn.execute(q).scalar()


def _daily(engine):
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT user_id, created_at, model_name, count, quota FROM daily_usage ORDER BY 1, 2, 3")
        ).all()


@pytest.fixture
def history(engine):
    """Logs one per 6 hours over 10 days for two users, rolled up."""
    with engine.begin() as conn:
        conn.execute(sa.insert(m.logs), [_log(u, NOW - h * 3600) for u in (1, 2) for h in range(0, 240, 6)])
        conn.execute(sa.insert(m.logs), [_log(1, NOW - 9 * D, kind=m.LOG_ERROR)])
    run_rollup(engine, Settings(database_url="sqlite://"), wait=True)
    return engine


def test_off_by_default(history):
    settings = Settings.from_env({})
    assert settings.retain_hourly_days == 0 and settings.retain_logs_days == 0
    hourly, logs, daily = _count(history, agg.hourly_usage), _count(history, m.logs), _daily(history)
    r = run_retention(history, settings, now=NOW)
    assert not r.enabled and r.deleted == {}
    assert (_count(history, agg.hourly_usage), _count(history, m.logs), _daily(history)) == (hourly, logs, daily)


def test_hourly_rows_past_the_horizon_go_daily_rows_stay(history):
    daily, logs = _daily(history), _count(history, m.logs)
    horizon = NOW - 3 * D
    old = agg.hourly_usage.c.created_at < horizon
    expected_gone = _count(history, agg.hourly_usage, old)
    assert expected_gone > 0
    r = run_retention(history, Settings(database_url="sqlite://", retain_hourly_days=3), now=NOW)
    assert r.deleted["hourly_usage"] == expected_gone
    assert r.deleted["hourly_model_usage"] > 0
    assert _count(history, agg.hourly_usage, old) == 0
    assert _count(history, agg.hourly_model_usage, agg.hourly_model_usage.c.created_at < horizon) == 0
    assert _count(history, agg.hourly_usage) == 2 * 12 + 2  # hours in the last 3 days, the horizon's hour included
    assert _daily(history) == daily
    assert _count(history, m.logs) == logs


def test_only_counted_logs_are_deleted(history):
    engine = history
    settings = Settings(database_url="sqlite://", retain_logs_days=5)
    daily = _daily(engine)
    # An old-timestamped log the rollup has not counted yet must stay.
    with engine.begin() as conn:
        late_id = conn.execute(sa.insert(m.logs).values(_log(3, NOW - 8 * D, quota=7)).returning(m.logs.c.id)).scalar()
    if engine.dialect.name == "postgresql":
        # A log inside a remembered gap may still be counted later: it must stay too.
        with engine.begin() as conn:
            gap_id = conn.execute(sa.select(sa.func.min(m.logs.c.id)).where(m.logs.c.created_at < NOW - 6 * D)).scalar()
            conn.execute(sa.insert(m.rollup_gap).values(lo=gap_id, hi=gap_id, discovered_at=datetime.now(UTC)))
    old = m.logs.c.created_at < NOW - 5 * D
    n_old = _count(engine, m.logs, old)

    r = run_retention(engine, settings, now=NOW)

    kept = {late_id} | ({gap_id} if engine.dialect.name == "postgresql" else set())
    assert r.deleted == {"logs": n_old - len(kept)}
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(m.logs.c.id).where(old)).scalars()) == kept
    assert _count(engine, m.logs, m.logs.c.created_at >= NOW - 5 * D) == 2 * 21  # hours 0, 6, ..., 120
    assert _daily(engine) == daily  # daily history is untouched

    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.delete(m.rollup_gap))
    run_rollup(engine, settings, wait=True)  # counts the late log ...
    assert run_retention(engine, settings, now=NOW).deleted == {"logs": len(kept)}  # ... and then it may go
    assert _count(engine, m.logs, old) == 0


def test_logs_go_in_batches(history):
    settings = Settings(database_url="sqlite://", retain_logs_days=1, rollup_batch_size=7)
    n_old = _count(history, m.logs, m.logs.c.created_at < NOW - D)
    assert run_retention(history, settings, now=NOW).deleted == {"logs": n_old}
    assert _count(history, m.logs, m.logs.c.created_at < NOW - D) == 0


def test_reaggregation_may_not_reach_before_the_log_horizon():
    settings = Settings(retain_logs_days=30)
    with pytest.raises(ValueError, match="RETAIN_LOGS_DAYS"):
        check_reaggregate_range(settings, NOW - 30 * D, now=NOW)
    check_reaggregate_range(settings, NOW - 28 * D, now=NOW)
    check_reaggregate_range(Settings(), 0, now=NOW)  # off: anything goes


def test_settings_from_env():
    s = Settings.from_env({"RETAIN_HOURLY_DAYS": "90", "RETAIN_LOGS_DAYS": "0"})
    assert (s.retain_hourly_days, s.retain_logs_days) == (90, 0)
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="RETAIN_LOGS_DAYS"):
        Settings.from_env({"RETAIN_LOGS_DAYS": "-1"})


def test_beat_runs_retention_daily():
    from celery.schedules import crontab

    from worker.app import RETENTION_TASK, make_celery

    entry = make_celery(Settings())
    entry = entry.conf.beat_schedule["retention"]
    assert entry["task"] == RETENTION_TASK
    assert isinstance(entry["schedule"], crontab) and entry["schedule"].hour == {3}


@pytest.mark.integration  # long: CLI processes; CI runs it, the fast default does not
def test_cli(tmp_path):
    url = f"sqlite:///{tmp_path / 'u.db'}"
    env = dict(os.environ, DATABASE_URL=url)

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shared.cli", *args],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )

    assert run("db", "upgrade").returncode == 0
    p = run("retention")
    assert p.returncode == 0 and "retention is off" in p.stdout
    from shared.db import make_engine

    engine = make_engine(url)
    import time

    now = int(time.time())
    with engine.begin() as conn:
        # 10 minutes inside each day boundary, so the second that passes before the command runs never matters
        conn.execute(sa.insert(m.logs), [_log(1, now - d * D + 600) for d in range(6)])
    assert run("rollup").returncode == 0
    p = run("retention", RETAIN_LOGS_DAYS="3", RETAIN_HOURLY_DAYS="2")
    assert p.returncode == 0, p.stderr
    assert "logs: 2 rows deleted" in p.stdout and "hourly_usage: 3 rows deleted" in p.stdout
    p = run("reaggregate", "--start", str(now - 5 * D), "--end", str(now), RETAIN_LOGS_DAYS="3")
    assert p.returncode == 2 and "RETAIN_LOGS_DAYS" in p.stderr
    engine.dispose()
