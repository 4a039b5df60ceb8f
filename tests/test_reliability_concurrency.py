"""Issue 6.2: four gateway writer processes (half their transactions held open for a
random time, some rolled back), a tick every 100 ms, two processes re-aggregating random,
overlapping ranges -- for 30 seconds (RELIABILITY_SECONDS) -- then exact totals: the
summary tables equal a GROUP BY over the raw consume logs, and the counts and quotas equal
what the writers themselves know they committed.

On PostgreSQL and on MariaDB (real servers, throwaway databases; on InnoDB the held
writers are the transactions whose ids the ticks must wait out through innodb_trx) and on
SQLite (a WAL file shared by the processes: SQLite allows one writer at a time, so
writers hold their transactions open for shorter times; a tick or re-aggregation waits
for the write lock).

The logs straddle the end of daylight saving time in America/New_York (a 25-hour day).

Both are marked `integration`: they run for RELIABILITY_SECONDS each, too long for the
fast default (`pytest -m "not integration"`); CI runs them.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import time

import pytest

from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from shared.rollup import keeps_gaps, rollup
from tests.conftest import throwaway_database
from tests.faults import workload
from tests.logdata import assert_exact, at, forget_gaps, totals

TZ = "America/New_York"
LO = at(TZ, 2024, 11, 1)
HI = at(TZ, 2024, 11, 5)
SECONDS = float(os.environ.get("RELIABILITY_SECONDS", "30"))
WRITERS = 4


def run_workload(url: str, max_hold: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = []
    for i in range(WRITERS):
        procs.append(
            ctx.Process(target=workload.writer, args=(results, f"writer{i}", url, 100 + i, SECONDS, LO, HI, max_hold))
        )
    procs.append(ctx.Process(target=workload.ticker, args=(results, "ticker", url, TZ, SECONDS, 0.1, 200)))
    for i in range(2):
        procs.append(
            ctx.Process(
                target=workload.reaggregator, args=(results, f"reaggregator{i}", url, TZ, 200 + i, SECONDS, LO, HI)
            )
        )
    reports = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + SECONDS + 120  # a hang detector, not a speed test
        while len(reports) < len(procs) and time.monotonic() < deadline:
            try:
                kind, name, payload = results.get(timeout=1)
            except queue_mod.Empty:
                continue
            assert kind == "done", f"{name} failed:\n{payload}"
            reports[name] = payload
        assert len(reports) == len(procs), f"stuck: only {sorted(reports)} reported"
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
    return reports


def check(engine, url: str, reports: dict) -> None:
    s = Settings(database_url=url, stats_timezone=TZ)
    rollup(engine, s, wait=True)
    if keeps_gaps(engine.dialect.name):
        forget_gaps(engine, s)
    assert_exact(engine, TZ)
    written = sum(r["count"] for n, r in reports.items() if n.startswith("writer"))
    quota = sum(r["quota"] for n, r in reports.items() if n.startswith("writer"))
    assert totals(engine) == totals(engine, "daily_usage") == totals(engine, "daily_model_usage") == (written, quota)
    ticker = reports["ticker"]
    assert ticker["ran"] > 0
    assert all(reports[f"reaggregator{i}"]["runs"] > 0 for i in range(2))
    print(
        f"\n[reliability] concurrency on {engine.dialect.name}: "
        f"{sum(r['transactions'] for n, r in reports.items() if n.startswith('writer'))} writer transactions, "
        f"{written} consume logs committed, counted {totals(engine)[0]}, lost 0; ticks {ticker}; "
        f"re-aggregations {[reports[f'reaggregator{i}'] for i in range(2)]}"
    )


def exact_after_the_workload(url: str, max_hold: float) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
        reports = run_workload(url, max_hold=max_hold)
        check(engine, url, reports)
    finally:
        engine.dispose()


@pytest.mark.integration
def test_writers_ticks_and_reaggregations_on_postgresql():
    with throwaway_database("usage_stats_conc") as url:
        exact_after_the_workload(url, max_hold=0.5)


@pytest.mark.integration
def test_writers_ticks_and_reaggregations_on_mariadb():
    with throwaway_database("usage_stats_conc", "mysql") as url:
        exact_after_the_workload(url, max_hold=0.5)


@pytest.mark.integration  # no server needed, but it runs for RELIABILITY_SECONDS
def test_writers_ticks_and_reaggregations_on_sqlite(tmp_path):
    exact_after_the_workload(f"sqlite:///{tmp_path / 'usage.db'}", max_hold=0.05)
