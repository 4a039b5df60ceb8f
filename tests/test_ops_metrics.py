"""Prometheus metrics: /metrics on the API, the tick metrics after a rollup, the worker's
own endpoint, multiprocess mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from shared import models as m
from shared.config import Settings
from shared.ops import run_reaggregate, run_rollup
from tests.api_support import add_user
from tests.test_worker import redis_url  # noqa: F401  (fixture)

API_METRICS = [
    "usage_stats_api_request_duration_seconds",
    "usage_stats_rollup_lag_seconds",
    "usage_stats_rollup_lag_logs",
    "usage_stats_rollup_logs_processed",
    "usage_stats_rollup_tick_duration_seconds",
    "usage_stats_rollup_tick_failures",
    "usage_stats_reaggregations_running",
]


def _value(name, labels=None):
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _log(user_id, created_at, quota=100, kind=m.LOG_CONSUME):
    return {
        "user_id": user_id,
        "username": f"u{user_id}",
        "created_at": created_at,
        "type": kind,
        "model_name": "gpt-4o",
        "quota": quota,
        "prompt_tokens": 10,
        "completion_tokens": 5,
    }


def test_metrics_endpoint_lists_the_metrics_after_requests(sqlite_engine):
    client = create_app(Settings(database_url="sqlite://"), engine=sqlite_engine).test_client()
    token = add_user(sqlite_engine, 1, "alice")
    before = _value(
        "usage_stats_api_request_duration_seconds_count", {"route": "/api/data/self", "method": "GET", "status": "200"}
    )
    assert client.get("/api/data/self", headers={"Authorization": token, "New-Api-User": "1"}).status_code == 200
    assert client.get("/api/data/self").status_code == 401
    assert client.get("/no/such/path").status_code == 404

    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    text = r.get_data(as_text=True)
    names = {f.name for f in text_string_to_metric_families(text)}
    for name in API_METRICS:
        assert name in names, name
    assert token not in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    key = (
        "usage_stats_api_request_duration_seconds_count",
        (("method", "GET"), ("route", "/api/data/self"), ("status", "200")),
    )
    assert samples[key] == before + 1
    assert (
        "usage_stats_api_request_duration_seconds_count",
        (("method", "GET"), ("route", "/api/data/self"), ("status", "401")),
    ) in samples
    # An unknown path is one series, not one per path.
    assert (
        "usage_stats_api_request_duration_seconds_count",
        (("method", "GET"), ("route", "unmatched"), ("status", "404")),
    ) in samples
    assert not any("/no/such/path" in str(k) for k in samples)


def test_tick_metrics_move_after_a_rollup(engine):
    settings = Settings(database_url="sqlite://", stats_timezone="UTC")
    now = int(time.time())
    with engine.begin() as conn:
        conn.execute(sa.insert(m.logs), [_log(u, now - 600 * i) for u in (1, 2) for i in range(5)])
        conn.execute(sa.insert(m.logs), [_log(1, now, kind=m.LOG_ERROR)])
    processed = _value("usage_stats_rollup_logs_processed_total")
    ticks = _value("usage_stats_rollup_tick_duration_seconds_count")
    ran = _value("usage_stats_rollup_ticks_total", {"outcome": "ran"})

    result = run_rollup(engine, settings, wait=True)

    assert result.logs == 10
    assert _value("usage_stats_rollup_logs_processed_total") == processed + 10
    assert _value("usage_stats_rollup_tick_duration_seconds_count") == ticks + 1
    assert _value("usage_stats_rollup_ticks_total", {"outcome": "ran"}) == ran + 1
    assert _value("usage_stats_rollup_lag_logs") == 0
    assert _value("usage_stats_rollup_lag_seconds") == 0
    assert _value("usage_stats_rollup_last_log_id") == result.last_log_id == 11

    # New logs behind the watermark show up as lag after the next tick that leaves them.
    with engine.begin() as conn:
        conn.execute(sa.insert(m.logs), [_log(3, now - 100)])
    run_rollup(engine, Settings(database_url="sqlite://", rollup_batch_size=1), max_seconds=0.0, wait=True)
    assert _value("usage_stats_rollup_logs_processed_total") == processed + 11

    running = _value("usage_stats_reaggregations_running")
    ok = _value("usage_stats_reaggregations_total", {"outcome": "success"})
    run_reaggregate(engine, settings, now - 86400, now + 1)
    assert _value("usage_stats_reaggregations_running") == running
    assert _value("usage_stats_reaggregations_total", {"outcome": "success"}) == ok + 1


def test_a_failing_tick_is_counted(sqlite_engine):
    settings = Settings(database_url="sqlite://")
    failures = _value("usage_stats_rollup_tick_failures_total")
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE rollup_state")
    with pytest.raises(sa.exc.OperationalError):
        run_rollup(sqlite_engine, settings, wait=True)
    assert _value("usage_stats_rollup_tick_failures_total") == failures + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(url, timeout=60.0, proc=None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited early with code {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout}s")


@pytest.mark.integration
@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_the_worker_serves_its_metrics(pg_engine, pg_url, redis_url, tmp_path, pool):
    """solo: the tasks run in the main process, which serves its own registry; prefork:
    they run in children, whose values reach the main process's endpoint through
    PROMETHEUS_MULTIPROC_DIR."""
    with pg_engine.begin() as conn:
        conn.execute(sa.insert(m.logs), [_log(1, int(time.time()) - 60 * i) for i in range(7)])
    port = _free_port()
    env = dict(
        os.environ,
        DATABASE_URL=pg_url,
        CELERY_BROKER_URL=redis_url,
        ROLLUP_INTERVAL_SECONDS="1",
        WORKER_METRICS_PORT=str(port),
        LOG_FORMAT="json",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if pool == "prefork":
        (tmp_path / "prom").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
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
            pool,
            "--concurrency",
            "2",
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
        deadline = time.monotonic() + 60
        processed = 0.0
        while time.monotonic() < deadline and processed < 7:
            text = _fetch(f"http://127.0.0.1:{port}/metrics", proc=proc)
            for f in text_string_to_metric_families(text):
                if f.name == "usage_stats_rollup_logs_processed":
                    processed = sum(s.value for s in f.samples if s.name.endswith("_total"))
            time.sleep(0.3)
        assert processed == 7
        assert "usage_stats_rollup_tick_duration_seconds_bucket" in text
    finally:
        from tests.test_worker import _stop

        _stop(proc)
    # LOG_FORMAT=json reaches the worker's lines too (Celery's setup_logging signal).
    ticks = [line for line in proc.stdout.read().splitlines() if "rollup tick" in line]
    assert ticks
    import json

    assert all(json.loads(line)["logger"] == "usage_stats.rollup" for line in ticks)


def test_multiprocess_mode_collects_files(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR, /metrics sums what every process wrote."""
    code = "from shared import metrics\nmetrics.observe_request('/x', 'GET', 200, 0.01)\n"
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
    out = subprocess.run(
        [sys.executable, "-c", "from shared import metrics; print(metrics.render().decode())"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(out)
        for s in f.samples
    }
    assert (
        samples[
            ("usage_stats_api_request_duration_seconds_count", (("method", "GET"), ("route", "/x"), ("status", "200")))
        ]
        == 2
    )


@pytest.mark.integration  # runs gunicorn with several workers
def test_gunicorn_workers_share_metrics_in_multiprocess_mode(tmp_path):
    """`usage-stats serve` with two gunicorn workers and PROMETHEUS_MULTIPROC_DIR: /metrics
    counts the requests of both workers, whichever answers it."""
    port = _free_port()
    mp = tmp_path / "prom"
    mp.mkdir()
    (mp / "stale_counter_99999.db").write_bytes(b"")  # a previous run's file: removed at start
    url = f"sqlite:///{tmp_path / 'u.db'}"
    env = dict(os.environ, DATABASE_URL=url, PROMETHEUS_MULTIPROC_DIR=str(mp), LOG_FORMAT="json")
    subprocess.run(
        [sys.executable, "-m", "shared.cli", "db", "upgrade"], env=env, check=True, cwd=tmp_path, capture_output=True
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _fetch(f"http://127.0.0.1:{port}/healthz", proc=proc)
        for _ in range(19):
            _fetch(f"http://127.0.0.1:{port}/healthz", proc=proc)
        assert not (mp / "stale_counter_99999.db").exists()
        text = _fetch(f"http://127.0.0.1:{port}/metrics", proc=proc)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        assert (
            samples[
                (
                    "usage_stats_api_request_duration_seconds_count",
                    (("method", "GET"), ("route", "/healthz"), ("status", "200")),
                )
            ]
            == 20
        )
    finally:
        from tests.test_worker import _stop

        _stop(proc)
    output = proc.stdout.read()
    import json

    access = [json.loads(line) for line in output.splitlines() if '"event": "request"' in line]
    assert len(access) == 21  # 20 x /healthz + /metrics: one JSON line per request
