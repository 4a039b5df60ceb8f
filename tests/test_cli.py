"""The usage-stats command line on the embedded default, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

import sqlalchemy as sa

from shared.db import make_engine


def run(tmp_path, *args):
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
    }
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_upgrade_demo_rollup_status_reaggregate(tmp_path):
    assert run(tmp_path, "db", "upgrade").returncode == 0
    again = run(tmp_path, "db", "upgrade")  # idempotent
    assert again.returncode == 0, again.stderr
    demo = run(tmp_path, "demo-data", "--days", "2", "--logs-per-day", "300", "--seed", "5")
    assert demo.returncode == 0 and "wrote 600 logs" in demo.stdout
    rolled = run(tmp_path, "rollup")
    assert rolled.returncode == 0 and "0 logs behind" in rolled.stdout

    engine = make_engine(f"sqlite:///{tmp_path / 'usage-stats.db'}")
    with engine.connect() as conn:
        consume = conn.execute(sa.text("SELECT count(*) FROM logs WHERE type = 2")).scalar()
        counted = conn.execute(sa.text("SELECT sum(count) FROM daily_usage")).scalar()
    engine.dispose()
    assert counted == consume and f"rolled up {consume} consume logs" in rolled.stdout

    status = run(tmp_path, "status")
    assert status.returncode == 0, status.stderr
    for line in (
        "last tick:",
        "lag:          0s, 0 logs behind",
        "open gaps:",
        "timezone:     UTC",
        "re-aggregations running:",
    ):
        assert line in status.stdout

    redone = run(tmp_path, "reaggregate", "--all", "--quiet")
    assert redone.returncode == 0 and f"{consume} consume logs" in redone.stdout


def test_bad_input_is_one_clear_line(tmp_path):
    assert run(tmp_path, "db", "upgrade").returncode == 0
    backwards = run(tmp_path, "reaggregate", "--start", "100", "--end", "50")
    assert backwards.returncode == 2 and "--end (50) must be after --start (100)" in backwards.stderr
    missing = run(tmp_path, "reaggregate", "--start", "100")
    assert missing.returncode == 2 and "--start and --end" in missing.stderr
    env_bad = subprocess.run(
        [sys.executable, "-m", "shared.cli", "rollup"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, STATS_TIMEZONE="Mars/Olympus"),
        timeout=60,
    )
    assert env_bad.returncode == 2 and "STATS_TIMEZONE" in env_bad.stderr and "Traceback" not in env_bad.stderr
