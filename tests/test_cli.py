"""The usage-stats command line on the embedded default, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from api import create_app
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import VERSION_TABLE, upgrade
from tests.api_support import add_user


def run(tmp_path, *args):
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
    }
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.integration  # long: a dozen CLI processes; CI runs it, the fast default does not
def test_upgrade_demo_rollup_status_reaggregate(tmp_path):
    created = run(tmp_path, "db", "upgrade")
    assert created.returncode == 0 and "schema created (revision " in created.stdout, created.stdout
    again = run(tmp_path, "db", "upgrade")  # idempotent, and says so
    assert again.returncode == 0, again.stderr
    assert "schema already current (revision " in again.stdout, again.stdout
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
        # No worker runs: the heartbeats say so (tests/test_jobs.py runs one).
        "workers:      none (no heartbeat in the last",
        "re-aggregations running: none (no worker runs)",
    ):
        assert line in status.stdout
    assert "no worker answered" not in status.stdout

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


def test_upgrade_says_from_which_revision(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'usage-stats.db'}")
    assert str(upgrade(engine, "0001")) == "created (revision 0001)"
    engine.dispose()
    upgraded = run(tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    engine = make_engine(f"sqlite:///{tmp_path / 'usage-stats.db'}")
    with engine.connect() as conn:
        head = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    engine.dispose()
    assert head != "0001" and f"schema upgraded from revision 0001 to {head}" in upgraded.stdout, upgraded.stdout


def test_enqueued_reaggregation_is_known_to_the_api_without_a_worker(tmp_path, monkeypatch):
    """`reaggregate --enqueue` on the embedded default, no worker running: the id it prints
    is a queued job to GET /api/data/reaggregate/<id> (it was a 404 until a worker took it)."""
    assert run(tmp_path, "db", "upgrade").returncode == 0
    enqueued = run(tmp_path, "reaggregate", "--start", "1700000000", "--end", "1700086400", "--enqueue")
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = enqueued.stdout.strip()

    monkeypatch.chdir(tmp_path)  # the default settings' SQLite files are relative to it
    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        token = add_user(engine, 1, "admin", role=m.ROLE_ADMIN)
        client = create_app(settings, engine=engine).test_client()
        headers = {"Authorization": f"Bearer {token}", "New-Api-User": "1"}
        r = client.get(f"/api/data/reaggregate/{task_id}", headers=headers)
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.get_json()["data"]["state"] == "PENDING"
        assert client.get(f"/api/data/reaggregate/{task_id}x", headers=headers).status_code == 404
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "line"),
    [
        # Nothing listens there: the server cannot be reached.
        ("postgresql://postgres@127.0.0.1:1/x", "cannot reach the database postgresql://postgres@127.0.0.1:1/x:"),
        # A driver that is not installed: one line naming the package.
        (
            "mysql+mysqldb://root@127.0.0.1/test",
            "the database driver MySQLdb is not installed: pip install mysqlclient",
        ),
        ("nosuchdb://x", "no database driver for this URL"),
    ],
)
def test_a_database_failure_is_one_line_that_says_which(url, line, monkeypatch, capsys):
    from shared.cli import main

    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"usage-stats: {line}") and err.count("\n") == 1, err


def test_a_statement_the_server_refuses_is_not_called_unreachable(tmp_path, monkeypatch, capsys):
    from shared.cli import main

    # A reachable database without our schema: the server answers, and refuses the read.
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("usage-stats: the database refused a statement: no such table"), err
