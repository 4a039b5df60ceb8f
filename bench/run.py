"""Every benchmark figure of BENCHMARKS.md, in one run, side by side.

    python -m bench.run --rows 1M                    # dense data (the default shape)
    python -m bench.run --shape sparse --rows 2M     # sparse data
    python -m bench.run --rows 1M --figures 6,7,8    # some figures only

Needs PostgreSQL (BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres),
Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/14) and wrk (Debian's package).
The data set (bench/data.py) is built once per shape and size in its own database
(usage_stats_bench_dense_1m, usage_stats_bench_sparse_2m, ...) and reused by later runs
(--rebuild builds it again); its storage per million logs is measured right after the
build. Every figure is a ratio of two things measured in this run, alternately, or a
median of several runs: this machine is noisy.

Figures (targets from issue 5):
1. full re-aggregation / bare GROUP BY over the same logs            (<= 1.5)
2. tick of 10,000 new logs on the full history / on an empty history (<= 2, tick < 100 ms)
3. API under wrk: /self heavy user 30 days hourly, site-wide 30 days daily, and the same
   answers computed from raw logs (>= 1000 req/s and p99 <= 25 ms for /self; >= 100x raw
   for the site-wide answer)
4. freshness: seconds from a log's commit to its appearance in the API (beat at its
   default interval; and with the real-time tail)
5. worker peak RSS during the full re-aggregation                    (<= 300 MB)
Issue 12's constraints: the product's five summary tables against the four original ones
(bench/variants.py), alternately in the same run:
6. a tick of 10,000 logs on the full history, five tables / four      (<= 1.5; measured
   with figure 2, in the same rounds)
1. re-aggregation / bare GROUP BY, each in a real worker (today's ratio kept; measured
   with figure 1, in the same rounds): the product's default (five tables, the finest
   compared with the logs) against today's (four tables, every one compared: the
   default needs the finest table, which the four lack), and the product comparing
   every table (check_every_table) for reference
7. the reads of today's answers (/self heavy user 30 days hourly, site-wide 30 days
   daily): EXPLAIN (ANALYZE, BUFFERS), tables and rows read   (no more than with four)
8. CSV export, 366 days site-wide by day x model x channel, and the same as JSON: rows,
   bytes and the serving gunicorn worker's peak RSS                    (bounded); and
   what its statement reads, days summed from hourly_detail_usage against the dropped
   six-table design's daily detail table (a scratch copy)
9. (on request) a full re-aggregation in this process, statement by statement, the
   three re-aggregations of figure 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shared import aggregation as agg
from shared import models as m
from shared import rollup
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade

from . import data, shapes, variants

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
HOUR, DAY = 3600, 86400
# The session settings a re-aggregation chunk uses (shared.rollup); the bare query gets
# them too, so that the floor is the fastest this database can do.
FLOOR_SETTINGS = ("SET jit = off", "SET work_mem = '64MB'")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_rows(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a row count: {text!r} (e.g. 1M, 250k, 10M)")
    return int(float(match[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[match[2].lower()])


# --- databases ---------------------------------------------------------------------------


def admin_engine():
    return make_engine(PG_ADMIN).execution_options(isolation_level="AUTOCOMMIT")


def database_url(name: str) -> str:
    return make_engine(PG_ADMIN).url.set(database=name).render_as_string(hide_password=False)


def recreate_database(name: str) -> str:
    with admin_engine().connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return database_url(name)


def prepared(rows: int, shape: str, rebuild: bool) -> tuple[str, dict]:
    """The benchmark database of this shape and size: built (logs, users, keys, channels,
    a full rollup), or reused."""
    name = data.database_name(shape, rows)
    url = database_url(name)
    if not rebuild:
        try:
            with make_engine(url).connect() as conn:
                meta = json.loads(conn.exec_driver_sql("SELECT info FROM bench_meta").scalar_one())
            if meta.get("rows") == rows and meta.get("shape") == shape and meta.get("complete"):
                log(f"reusing {name} (built {meta['built']}; --rebuild to build it again)")
                upgrade(make_engine(url))  # the schema of the code being measured
                return url, meta
        except sa.exc.SQLAlchemyError:
            pass
    log(f"building {name}: {rows:,} logs")
    url = recreate_database(name)
    engine = make_engine(url)
    upgrade(engine)
    meta = data.build(engine, rows, shape)
    log(f"  loaded in {meta['load_seconds']} s, indexed and analyzed by {meta['total_seconds']} s")
    settings = Settings(database_url=url)
    started = time.perf_counter()
    result = rollup.rollup(engine, settings, wait=True)
    seconds = time.perf_counter() - started
    meta["initial_rollup"] = {
        "logs": result.logs,
        "seconds": round(seconds, 2),
        "logs_per_second": round(result.logs / seconds),
        "batches": result.batches,
    }
    log(f"  first rollup: {result.logs:,} logs in {seconds:.1f} s ({result.logs / seconds:,.0f} logs/s)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
    # Now, before any figure: ticks and re-aggregations leave dead rows and free space.
    meta["storage"] = data.storage(engine)
    meta.update(rows=rows, complete=True, built=time.strftime("%Y-%m-%d %H:%M:%S"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE bench_meta (info TEXT)")
        conn.execute(sa.text("INSERT INTO bench_meta VALUES (:info)"), {"info": json.dumps(meta)})
    engine.dispose()
    return url, meta


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(url: str, **extra) -> dict:
    env = dict(
        os.environ,
        DATABASE_URL=url,
        CELERY_BROKER_URL=REDIS,
        CELERY_RESULT_BACKEND=REDIS,
        PYTHONPATH=str(ROOT),
        LOG_FORMAT="plain",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextmanager
def process(cmd: list[str], env: dict, logfile: Path, on_stop=None):
    """A process group, stopped by SIGTERM (then `on_stop()`, then SIGKILL after 20 s)."""
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                if on_stop is not None:
                    on_stop()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def wait_for(check, timeout: float, what: str, proc=None, logfile: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited ({logfile.read_text()[-2000:] if logfile else ''})")
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


@contextmanager
def gunicorn_server(url: str, workdir: Path, workers: int, on_stop=None, timeout: int = 30):
    """gunicorn serving the API and bench/raw_api.py's routes: (its base URL, the master
    process). `timeout`: gunicorn's, the seconds a sync worker may spend on one request."""
    port = free_port()
    logfile = workdir / "gunicorn.log"
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:api.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--timeout",
        str(timeout),
        "bench.raw_api:create_app()",
    ]
    with process(cmd, service_env(url), logfile, on_stop) as proc:
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return urllib.request.urlopen(base + "/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_for(up, 30, "gunicorn", proc, logfile)
        yield base, proc


@contextmanager
def gunicorn(url: str, workdir: Path, workers: int, on_stop=None):
    with gunicorn_server(url, workdir, workers, on_stop) as (base, _):
        yield base


@contextmanager
def celery_worker(
    url: str,
    workdir: Path,
    *,
    beat: bool = False,
    app: str = "worker",
    queue: str | None = None,
    concurrency: int = 1,
    **settings: Any,
):
    """A real worker (prefork, one child, as the product runs it), optionally with beat
    at the default interval; both on Redis. `app`: the Celery app module (the product's,
    or bench.four_table_worker); `queue`: consume only this queue (so that two workers
    can run side by side, each sent its own tasks), which is then left unflushed;
    `concurrency`: pool processes; `settings`: more environment (REAGGREGATE_WORKERS=2)."""
    import redis

    if queue is None:
        redis.Redis.from_url(REDIS).flushdb()
    env = service_env(url, **settings)
    env.pop("ROLLUP_INTERVAL_SECONDS", None)  # the default interval
    name = app.rsplit(".", 1)[-1]
    wlog = workdir / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--pool=prefork",
        f"--concurrency={concurrency}",
        "-l",
        "INFO",
        "-n",
        f"bench-{name}-{os.getpid()}@%h",
        *(["-Q", queue] if queue else []),
    ]
    with process(cmd, env, wlog) as proc:
        wait_for(lambda: "ready." in wlog.read_text(errors="replace"), 60, "the celery worker", proc, wlog)
        if not beat:
            yield proc
            return
        blog = workdir / "beat.log"
        with process(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "beat",
                "-l",
                "INFO",
                "-s",
                str(workdir / "beat-schedule"),
            ],
            env,
            blog,
        ):
            yield proc


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (0 once it is gone). (bench.api_phases
    keeps its own: its tree processes run without this package on sys.path.)"""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# --- figure 1 and 5: full re-aggregation vs bare GROUP BY; the worker's memory -------------

BARE = """
SELECT created_at - created_at %% 3600 AS hour, user_id, model_name, count(*), sum(quota),
       sum(prompt_tokens + completion_tokens), sum(prompt_tokens), sum(completion_tokens)
FROM logs WHERE type = 2 GROUP BY 1, 2, 3
"""
# The same at the grain of the detail tables: every dimension of shared.aggregation.
BARE_DETAIL = """
SELECT created_at - created_at %% 3600 AS hour, user_id, username, model_name, token_id, token_name,
       channel_id, "group", count(*), sum(quota),
       sum(prompt_tokens + completion_tokens), sum(prompt_tokens), sum(completion_tokens)
FROM logs WHERE type = 2 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""


def bare_group_by(engine, query: str = BARE) -> float:
    """The floor: the aggregation alone, every output row computed (EXPLAIN ANALYZE runs
    it to the end without shipping rows to us), best of default and our session settings."""
    best = float("inf")
    for settings in ((), FLOOR_SETTINGS):
        with engine.connect() as conn:
            for s in settings:
                conn.exec_driver_sql(s)
            started = time.perf_counter()
            conn.exec_driver_sql("EXPLAIN (ANALYZE, TIMING OFF) " + query).all()
            took = time.perf_counter() - started
        best = min(best, took)
    return best


def reaggregate_in_worker(
    app, url: str, worker_pid: int, start: int, end: int, queue: str | None = None, check_every_table: bool = False
) -> dict:
    """Hand a full re-aggregation to the real worker (as POST /api/data/reaggregate does),
    sample the RSS of its processes until it is done, return the task's own timing."""
    from worker.app import REAGGREGATE_TASK

    result = app.send_task(REAGGREGATE_TASK, args=[start, end, None, check_every_table], queue=queue)
    peak = {"main": 0, "child": 0}
    deadline = time.monotonic() + 3 * 3600
    while not result.ready():
        if time.monotonic() > deadline:
            raise RuntimeError("re-aggregation did not finish in 3 hours")
        peak["main"] = max(peak["main"], rss_kb(worker_pid))
        for child in children(worker_pid):
            peak["child"] = max(peak["child"], rss_kb(child), rss_kb(child, "VmHWM"))
        time.sleep(0.05)
    out = result.get(timeout=10)
    for child in children(worker_pid):
        peak["child"] = max(peak["child"], rss_kb(child, "VmHWM"))
    peak["main"] = max(peak["main"], rss_kb(worker_pid, "VmHWM"))
    out["peak_rss_mb"] = {k: round(v / 1024, 1) for k, v in peak.items()}
    return out


def vacuum_summaries(engine: Any) -> None:
    names = ", ".join(s.table.name for s in agg.SUMMARIES)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM ANALYZE {names}")


# The Celery app module of each variant's worker (bench/variants.py), and its queue.
WORKERS = {"five": "worker", "four": "bench.four_table_worker"}

# The re-aggregations compared: name -> (the tables, i.e. the worker, check_every_table).
# The product's default compares its finest table (hourly_detail_usage) with the logs
# and sums the other four again from it where it changed. That needs a finest table
# holding every dimension and hours cut at local midnights, which the four original
# tables lack: "today's" re-aggregation is what today's code did, every table compared
# with the logs (check_every_table). "five_check" is the product doing the same with its
# five tables (reaggregate --check-every-table), for reference.
REAGGREGATIONS: dict[str, tuple[str, bool]] = {
    "five": ("five", False),
    "four": ("four", True),
    "five_check": ("five", True),
}


def figure_1_and_5(url: str, workdir: Path, repeats: int) -> dict:
    """Full re-aggregations in real workers, each of REAGGREGATIONS: the product's worker
    (five tables) and one writing the four original tables, alternately, each beside the
    bare GROUP BY; then each into emptied tables. Both workers run throughout, each on a
    queue of its own."""
    from worker import make_celery

    engine = make_engine(url)
    app = make_celery(Settings.from_env(service_env(url)))
    bare: list[float] = []
    bare_detail: list[float] = []
    unchanged: dict[str, list[float]] = {v: [] for v in REAGGREGATIONS}
    rebuild: dict[str, list[float]] = {v: [] for v in REAGGREGATIONS}
    rss: dict[str, list[dict]] = {v: [] for v in REAGGREGATIONS}

    def one(variant: str, times: list, what: str) -> None:
        tables, check_every_table = REAGGREGATIONS[variant]
        out = reaggregate_in_worker(
            app, url, workers[tables].pid, data.PERIOD_START, data.PERIOD_END, f"bench-{tables}", check_every_table
        )
        times.append(out["seconds"])
        rss[variant].append(out["peak_rss_mb"])
        log(
            f"  fig 1 {what}, {variant}: re-aggregation {times[-1]:.2f} s "
            f"({out['logs']:,} logs, {out['chunks']} chunks), worker RSS {out['peak_rss_mb']}"
        )

    import redis

    redis.Redis.from_url(REDIS).flushdb()
    with (
        celery_worker(url, workdir, app=WORKERS["five"], queue="bench-five") as five,
        celery_worker(url, workdir, app=WORKERS["four"], queue="bench-four") as four,
    ):
        workers = {"five": five, "four": four}
        for i in range(repeats):
            bare.append(bare_group_by(engine))
            bare_detail.append(bare_group_by(engine, BARE_DETAIL))
            log(f"  fig 1 round {i + 1}: bare GROUP BY {bare[-1]:.2f} s, at the detail grain {bare_detail[-1]:.2f} s")
            order = list(REAGGREGATIONS) if i % 2 == 0 else list(REAGGREGATIONS)[::-1]
            for variant in order:
                one(variant, unchanged[variant], f"round {i + 1}, history unchanged")
        # The other case: the summary rows are gone (a new STATS_TIMEZONE, a first
        # install beside an old gateway) and every row must be written. Each variant
        # empties the tables it writes; the product's default goes last, so that it
        # leaves every table whole, as the product writes them. TRUNCATE leaves them as
        # a first install has them: no statistics yet. (Deleted and then VACUUM
        # ANALYZEd, they would tell the planner they hold no rows until autovacuum
        # analyzes them again, and re-aggregation's DELETE ... IN (rollup_change) then
        # runs as a nested loop whose cost grows with every chunk: over 8 minutes for
        # what takes 30 s, on a machine whose autovacuum was busy elsewhere.)
        for variant in ("four", "five_check", "five"):
            names = ", ".join(s.table.name for s in variants.VARIANTS[REAGGREGATIONS[variant][0]])
            with engine.begin() as conn:
                conn.exec_driver_sql(f"TRUNCATE {names}")
            bare.append(bare_group_by(engine))
            bare_detail.append(bare_group_by(engine, BARE_DETAIL))
            one(variant, rebuild[variant], "into empty tables")
    vacuum_summaries(engine)
    engine.dispose()
    floor = statistics.median(bare)
    floor_detail = statistics.median(bare_detail)
    ratio = {v: round(statistics.median(unchanged[v]) / floor, 2) for v in REAGGREGATIONS}
    ratio_rebuild = {v: round(rebuild[v][0] / floor, 2) for v in REAGGREGATIONS}
    return {
        "fig1": {
            "bare_seconds": bare,
            "bare_detail_seconds": bare_detail,
            "reaggregate_unchanged_seconds": unchanged["five"],
            "reaggregate_rebuild_seconds": rebuild["five"],
            "ratio_unchanged": ratio["five"],
            "ratio_rebuild": ratio_rebuild["five"],
            "target": 1.5,
        },
        "issue12_reaggregation": {
            "unchanged_seconds": unchanged,
            "rebuild_seconds": rebuild,
            "bare_median_seconds": round(floor, 3),
            "bare_detail_median_seconds": round(floor_detail, 3),
            "ratio_unchanged": ratio,
            "ratio_rebuild": ratio_rebuild,
            "ratio_unchanged_to_detail_bare": {
                v: round(statistics.median(unchanged[v]) / floor_detail, 2) for v in REAGGREGATIONS
            },
            "ratio_rebuild_to_detail_bare": {v: round(rebuild[v][0] / floor_detail, 2) for v in REAGGREGATIONS},
            # The constraint: five tables keep today's (four tables') ratio to the bare GROUP BY.
            "five_over_four_unchanged": round(ratio["five"] / ratio["four"], 2),
            "five_over_four_rebuild": round(ratio_rebuild["five"] / ratio_rebuild["four"], 2),
            # For reference: the product comparing every table, against today's.
            "five_check_over_four_unchanged": round(ratio["five_check"] / ratio["four"], 2),
            "five_check_over_four_rebuild": round(ratio_rebuild["five_check"] / ratio_rebuild["four"], 2),
            # Per round (the three run back to back): the default's time over today's.
            "paired_five_over_four_unchanged": [
                round(a / b, 2) for a, b in zip(unchanged["five"], unchanged["four"], strict=True)
            ],
            # Each variant against the bare GROUP BY at the grain of its finest table: five
            # tables' to the detail grain's, over four's to (hour, user, model)'s.
            "five_at_detail_over_four_unchanged": round(
                statistics.median(unchanged["five"]) / floor_detail / ratio["four"], 2
            ),
            "five_at_detail_over_four_rebuild": round(rebuild["five"][0] / floor_detail / ratio_rebuild["four"], 2),
            "peak_rss_mb": rss,
        },
        "fig5": {
            "peak_rss_mb": rss["five"],
            "worst_child_mb": max(r["child"] for r in rss["five"]),
            "worst_main_mb": max(r["main"] for r in rss["five"]),
            "target_mb": 300,
        },
    }


def figure_9(url: str, repeats: int = 1) -> dict:
    """Where a full re-aggregation's time goes, statement by statement: in this process,
    each of REAGGREGATIONS, alternately (history unchanged)."""
    engine = make_engine(url)
    timer = StatementTimer(engine)
    spent: dict[str, list[dict[str, float]]] = {v: [] for v in REAGGREGATIONS}
    for i in range(repeats):
        for variant in list(REAGGREGATIONS) if i % 2 == 0 else list(REAGGREGATIONS)[::-1]:
            tables, check_every_table = REAGGREGATIONS[variant]
            with variants.summaries(tables), timer.recording() as by_statement:
                started = time.perf_counter()
                rollup.reaggregate(
                    engine,
                    Settings(database_url=url),
                    data.PERIOD_START,
                    data.PERIOD_END,
                    check_every_table=check_every_table,
                )
                took = time.perf_counter() - started
            by_statement["commit and python"] = took - sum(by_statement.values())
            by_statement["the re-aggregation"] = took
            spent[variant].append(by_statement)
            log(f"  fig 9 round {i + 1}, {variant}: {took:.2f} s")
    engine.dispose()
    return {
        v: {
            k: round(statistics.median(one.get(k, 0.0) for one in runs), 3)
            for k in sorted({k for one in runs for k in one})
        }
        for v, runs in spent.items()
    }


# --- figure 2: a tick of 10,000 new logs on the full history vs on an empty one -------------


class StatementTimer:
    """The time an engine's statements take while `recording`, by what each does:
    "insert <table>", "update <table>", "delete <table>", or "other" (reads, DDL)."""

    PATTERN = re.compile(r"\s*(INSERT INTO|UPDATE|DELETE FROM)\s+(\w+)", re.I)
    CREATE = re.compile(r"\s*CREATE TEMPORARY TABLE (\w+) AS", re.I)

    def __init__(self, engine: Any) -> None:
        self.spent: dict[str, float] | None = None
        sa.event.listen(engine, "before_cursor_execute", self._before)
        sa.event.listen(engine, "after_cursor_execute", self._after)

    @classmethod
    def kind(cls, statement: str) -> str:
        found = cls.PATTERN.match(statement)
        if found:
            return f"{found[1].split()[0].lower()} {found[2]}"
        created = cls.CREATE.match(statement)
        if created:
            # A re-aggregation's comparison of fresh rows with a summary table's: named
            # by the first summary table it reads.
            read = [t for t in variants.ALL_TABLES if re.search(rf"\b{t}\b", statement)]
            return f"create {created[1]}" + (f" from {read[0]}" if read else "")
        return "other"

    def _before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def _after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.spent is not None:
            kind = self.kind(statement)
            self.spent[kind] = self.spent.get(kind, 0.0) + time.perf_counter() - conn.info.pop("bench_started")

    @contextmanager
    def recording(self):
        self.spent = spent = {}
        try:
            yield spent
        finally:
            self.spent = None


@contextmanager
def explaining_inserts(engine: Any):
    """While in the block, every INSERT INTO the engine runs is run as EXPLAIN (ANALYZE,
    BUFFERS, WAL) of itself (which executes it all the same): yields the list that
    collects (table, plan) pairs. For seeing where a real tick's time goes, statement by
    statement, without rewriting its statements here."""
    plans: list[tuple[str, dict]] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if StatementTimer.kind(statement).startswith("insert ") and not executemany:
            statement = "EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + statement
            conn.info["bench_explained"] = True
        return statement, parameters

    def after(conn, cursor, statement, parameters, context, executemany):
        if conn.info.pop("bench_explained", False):
            plan = cursor.fetchall()[0][0]
            plans.append((StatementTimer.kind(statement[len("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) ") :]), plan))

    sa.event.listen(engine, "before_cursor_execute", before, retval=True)
    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        yield plans
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)


def insert_plan_facts(plan: Any) -> dict:
    """What an EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) of an INSERT says it did."""
    top = plan[0] if isinstance(plan, list) else plan
    node = top["Plan"]
    return {
        "ms": round(top["Execution Time"], 2),
        "rows_in": node["Plans"][0]["Actual Rows"] if node.get("Plans") else None,
        "inserted": node.get("Tuples Inserted"),
        "conflicting": node.get("Conflicting Tuples"),
        "shared_hit": node.get("Shared Hit Blocks"),
        "shared_read": node.get("Shared Read Blocks"),
        "dirtied": node.get("Shared Dirtied Blocks"),
        "wal_records": node.get("WAL Records"),
        "wal_fpi": node.get("WAL FPI"),
        "wal_bytes": node.get("WAL Bytes"),
    }


TICK_CASES = (("history", "five"), ("history", "four"), ("empty", "five"))


def figure_2(url: str, rows: int, rounds: int, shape: str, batch: int = 10_000, explained: int = 3) -> dict:
    """Ticks of `batch` new logs in the data's last hour: on the full history with all five
    summary tables, on it with the four original ones, and on an empty database with five;
    the three in turn, the order rotating each round. Then `explained` more ticks on the
    full history, five tables, each insert run under EXPLAIN ANALYZE (not timed)."""
    big = make_engine(url)
    empty_url = recreate_database("usage_stats_bench_empty")
    empty = make_engine(empty_url)
    upgrade(empty)
    with empty.begin() as conn:
        data.create_gateway(conn)
        data.load_traces(conn)
    with big.begin() as conn:
        trace_len = data.load_traces(conn)
        top = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar()
    engines = {"history": (big, url), "empty": (empty, empty_url)}
    timers = {name: StatementTimer(engine) for name, (engine, _) in engines.items()}
    times: dict[str, list[float]] = {f"{db}_{v}": [] for db, v in TICK_CASES}
    spent: dict[str, list[dict]] = {f"{db}_{v}": [] for db, v in TICK_CASES}
    counted: dict[str, list[int]] = {f"{db}_{v}": [] for db, v in TICK_CASES}
    buckets: dict[str, list[int]] = {f"{db}_{v}": [] for db, v in TICK_CASES}
    plans: list[tuple[str, dict]] = []
    first = rows

    def add_logs(db: str) -> None:
        nonlocal first
        engine = engines[db][0]
        with engine.begin() as conn:
            if db == "empty":
                # An empty history every time: the previous tick's rows go (ids go on
                # from the sequence, so the watermark stays valid).
                for t in (m.logs, *(s.table for s in agg.SUMMARIES)):
                    conn.execute(sa.delete(t))
            # New logs in the data's last hour, as a gateway writes them.
            data.generate_logs(conn, first, batch, data.PERIOD_END - HOUR, HOUR, trace_len, shape)
        first += batch

    try:
        for i in range(rounds):
            # Rotate the order, so that no case always runs on a warmer machine.
            k = i % len(TICK_CASES)
            for db, variant in TICK_CASES[k:] + TICK_CASES[:k]:
                add_logs(db)
                engine, u = engines[db]
                name = f"{db}_{variant}"
                with variants.summaries(variant), timers[db].recording() as by_statement:
                    # The whole call: the lock, the statements and the commit (the tick's
                    # own `seconds` stops before its last statement and the commit).
                    started = time.perf_counter()
                    result = rollup.tick(engine, Settings(database_url=u), wait=True)
                    took = time.perf_counter() - started
                times[name].append(took)
                # The rest: the commit (its WAL flush) and Python, between statements.
                by_statement["commit and python"] = took - sum(by_statement.values())
                spent[name].append({k: round(v * 1000, 2) for k, v in by_statement.items()})
                counted[name].append(result.logs)
                buckets[name].append(result.buckets)
            log(
                f"  fig 2 round {i + 1}: tick on history, five tables {times['history_five'][-1] * 1000:.1f} ms, "
                f"four tables {times['history_four'][-1] * 1000:.1f} ms; on empty, five tables "
                f"{times['empty_five'][-1] * 1000:.1f} ms ({counted['history_five'][-1]:,} consume logs)"
            )
        for _ in range(explained):
            add_logs("history")
            with explaining_inserts(big) as collected:
                rollup.tick(big, Settings(database_url=url), wait=True)
            plans += collected
    finally:
        # Put the big database back as it was: drop the added logs, re-aggregate their day
        # into every table (the four-table ticks left the detail tables without theirs).
        with big.begin() as conn:
            conn.execute(sa.delete(m.logs).where(m.logs.c.id > top))
            conn.exec_driver_sql("DROP TABLE IF EXISTS bench_trace")
        rollup.reaggregate(big, Settings(database_url=url), data.PERIOD_END - HOUR, data.PERIOD_END)
        vacuum_summaries(big)
        big.dispose()
        empty.dispose()
        with admin_engine().connect() as conn:
            conn.exec_driver_sql('DROP DATABASE IF EXISTS "usage_stats_bench_empty" WITH (FORCE)')
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = [a / b for a, b in zip(times["history_five"], times["history_four"], strict=True)]

    def statement_medians(name: str) -> dict[str, float]:
        kinds = sorted({k for one in spent[name] for k in one})
        return {k: round(statistics.median(one.get(k, 0.0) for one in spent[name]), 2) for k in kinds}

    by_table: dict[str, list[dict]] = {}
    for kind, plan in plans:
        by_table.setdefault(kind, []).append(insert_plan_facts(plan))
    explain = {
        kind: {
            key: statistics.median(f[key] for f in facts) if all(f[key] is not None for f in facts) else None
            for key in facts[0]
        }
        for kind, facts in by_table.items()
    }
    return {
        "fig2": {
            "tick_seconds": {"history": times["history_five"], "empty": times["empty_five"]},
            "consume_logs_per_tick": counted["history_five"][0],
            "median_ms": {"history": round(med["history_five"] * 1000, 1), "empty": round(med["empty_five"] * 1000, 1)},
            "ratio": round(med["history_five"] / med["empty_five"], 2),
            "target_ratio": 2,
            "target_tick_ms": 100,
        },
        "issue12_tick": {
            "tick_seconds": times,
            "consume_logs_per_tick": counted["history_five"][0],
            "finest_hourly_rows_touched": {k: statistics.median(v) for k, v in buckets.items()},
            "median_ms": {k: round(v * 1000, 1) for k, v in med.items()},
            "ratio": round(med["history_five"] / med["history_four"], 2),
            "paired_ratio_median": round(statistics.median(paired), 2),
            "paired_ratios": [round(r, 2) for r in paired],
            "target_ratio": 1.5,
            "statement_ms": {k: statement_medians(k) for k in times},
            "explain_five_tables": explain,
        },
    }


# --- figure 3: the API under wrk ----------------------------------------------------------


def _units(value: str) -> float:
    """wrk's latency ('812.00us', '3.21ms', '1.02s') in milliseconds."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if found is None:
        raise ValueError(f"not a wrk latency: {value!r}")
    number, unit = found.groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def wrk(url: str, token: str, user: int, seconds: int, connections: int = 32, timeout: int = 60) -> dict:
    env = dict(os.environ, BENCH_TOKEN=token, BENCH_USER=str(user))
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={timeout}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / "wrk_auth.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + timeout + 30,
        check=True,
    ).stdout
    rate, requests = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    if rate is None or requests is None:
        raise RuntimeError(f"wrk's output is not as expected: {out}")
    result: dict[str, Any] = {"requests_per_second": float(rate[1]), "requests": int(requests[1])}
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = round(_units(found[1]), 2) if found else None
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    result["non_2xx"] = int(bad[1]) if bad else 0
    result["socket_errors"] = errors[1] if errors else ""
    return result


def fetch(url: str, token: str, user: int) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "New-Api-User": str(user)})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.load(resp)


def abandon_queries(url: str) -> None:
    """End the statements the stopped server left running on the benchmark database."""
    name = make_engine(url).url.database
    with admin_engine().connect() as conn:
        conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )


def heaviest_user(url: str) -> int:
    """The user with the most consume logs (in the dense shape user 1; in the sparse one
    every user sends about as many)."""
    d = agg.daily_usage.c
    with make_engine(url).connect() as conn:
        return int(
            conn.execute(
                sa.select(d.user_id).group_by(d.user_id).order_by(sa.func.sum(d.count).desc()).limit(1)
            ).scalar_one()
        )


def figure_3(url: str, workdir: Path, seconds: int, workers: int) -> dict:
    end = data.PERIOD_END - 1
    start = end - 30 * DAY + 1
    heavy = heaviest_user(url)
    admin = data.ADMIN_ID
    cases = {
        "self_hourly": (f"/data/self?granularity=hour&start_timestamp={start}&end_timestamp={end}", heavy),
        "site_daily": (f"/data/?granularity=day&start_timestamp={start}&end_timestamp={end}", admin),
        # Not a target: the same user's 30 days by day, to show the cost per request
        # when the answer is small (90 rows instead of 2,000).
        "self_daily": (f"/data/self?granularity=day&start_timestamp={start}&end_timestamp={end}", heavy),
    }
    out: dict[str, Any] = {"workers": workers, "seconds": seconds, "connections": 32, "heavy_user": heavy}
    for name, (path, user) in cases.items():
        # A server of its own per case: the raw-logs load leaves dozens of slow requests
        # queued behind it, which must not run into the next measurement.
        # Once told to stop, its workers finish the request at hand: end those statements.
        with gunicorn(url, workdir, workers, on_stop=lambda: abandon_queries(url)) as base:
            token = data.user_token(user)
            started = time.perf_counter()
            summary = fetch(f"{base}/api{path}", token, user)
            alone = {"api": time.perf_counter() - started}
            row: dict[str, Any] = {"rows": len(summary["data"]), "bytes": len(json.dumps(summary))}
            if name != "self_daily":
                started = time.perf_counter()
                on_the_fly = fetch(f"{base}/raw{path}", token, user)
                alone["raw"] = time.perf_counter() - started
                # Side by side only if they are the same answer.
                assert summary == on_the_fly, f"{name}: the summary answer differs from the raw-logs answer"
            # One request on an idle server, before the load: the latency without queueing.
            row["alone_ms"] = {k: round(v * 1000, 1) for k, v in alone.items()}
            for kind in ("api", "raw") if name != "self_daily" else ("api",):
                row[kind] = wrk(f"{base}/{kind}{path}", token, user, seconds)
                log(
                    f"  fig 3 {name} {kind}: {row[kind]['requests_per_second']:.1f} req/s, "
                    f"p50 {row[kind]['p50_ms']} ms, p99 {row[kind]['p99_ms']} ms, {row[kind]['requests']} requests"
                )
            if "raw" in row:
                raw_rps = row["raw"]["requests_per_second"]
                if row["raw"]["requests"] == 0:
                    # Not one raw answer finished under load. The most the raw path could
                    # serve is every core busy with requests as long as the one timed
                    # alone: the ratio is at least this.
                    raw_rps, row["ratio_is_lower_bound"] = (os.cpu_count() or 1) / alone["raw"], True
                row["ratio"] = round(row["api"]["requests_per_second"] / raw_rps, 1)
            out[name] = row
    out["targets"] = {"self_rps": 1000, "self_p99_ms": 25, "site_ratio": 100}
    return out


# --- figure 7: what today's answers read --------------------------------------------------


def plan_reads(plan: dict) -> dict:
    """The relations a plan (EXPLAIN ... FORMAT JSON) read: per table, how it was reached
    (node type and index) and the rows it returned (actual rows x loops), plus the
    statement's buffers and time."""
    tables: dict[str, dict] = {}

    def walk(node: dict) -> None:
        relation = node.get("Relation Name")
        if relation:
            t = tables.setdefault(relation, {"rows": 0, "nodes": []})
            t["rows"] += int(node["Actual Rows"] * node["Actual Loops"])
            how = node["Node Type"] + (f" on {node['Index Name']}" if node.get("Index Name") else "")
            if how not in t["nodes"]:
                t["nodes"].append(how)
            t["heap_fetches"] = t.get("heap_fetches", 0) + int(node.get("Heap Fetches", 0))
            t["rows_removed_by_filter"] = t.get("rows_removed_by_filter", 0) + int(
                node.get("Rows Removed by Filter", 0) * node["Actual Loops"]
            )
        for child in node.get("Plans", []):
            walk(child)

    top = plan[0] if isinstance(plan, list) else plan
    walk(top["Plan"])
    return {
        "tables": tables,
        "rows_returned": top["Plan"]["Actual Rows"],
        "shared_hit": top["Plan"].get("Shared Hit Blocks"),
        "shared_read": top["Plan"].get("Shared Read Blocks"),
        "execution_ms": round(top["Execution Time"], 2),
    }


def explain_answer(conn, statement: Any, params: dict) -> dict:
    compiled = statement.compile(dialect=conn.dialect)
    bound = {**compiled.params, **params}
    plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + str(compiled), bound).scalar_one()
    return plan_reads(plan)


def figure_7(url: str, repeats: int = 3) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of today's two answers, as the API runs them
    (shared.queries.prepare, with the real-time tail): the /self heavy user's 30 days by
    the hour and the site-wide 30 days by day, with five summary tables and with the four
    original ones, alternately; the last of `repeats` runs each (a warm cache)."""
    from shared import queries

    end = data.PERIOD_END - 1
    start = end - 30 * DAY + 1
    heavy = heaviest_user(url)
    answers = {
        "self_hourly": (queries.PER_USER, queries.View(granularity="hour"), {"user_id": heavy}),
        "site_daily": (queries.SITE_WIDE, queries.View(granularity="day"), {}),
    }
    engine = make_engine(url)
    out: dict[str, Any] = {"heavy_user": heavy, "start": start, "end": end}
    for name, (shape, view, values) in answers.items():
        out[name] = {}
        for i in range(repeats):
            for variant in ("five", "four") if i % 2 == 0 else ("four", "five"):
                with variants.summaries(variant), queries.snapshot(engine) as conn:
                    statement, params = queries.prepare(conn, shape, view, start, end, values)
                    out[name][variant] = explain_answer(conn, statement, params)
        five, four = out[name]["five"], out[name]["four"]
        out[name]["same_tables_and_rows"] = {t: v["rows"] for t, v in five["tables"].items()} == {
            t: v["rows"] for t, v in four["tables"].items()
        }
        log(
            f"  fig 7 {name}: five tables read "
            + ", ".join(f"{t} {v['rows']:,} rows ({'; '.join(v['nodes'])})" for t, v in five["tables"].items())
            + f"; four tables the same: {out[name]['same_tables_and_rows']}"
        )
    engine.dispose()
    return out


# --- figure 8: CSV export in bounded memory --------------------------------------------------


def download(url: str, token: str, user: int, sample) -> dict:
    """GET `url`, read as it streams (64 KiB at a time), calling `sample()` between reads:
    bytes, lines, seconds to the first byte and in all, and the body when it is JSON."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "New-Api-User": str(user)})
    started = time.perf_counter()
    size = lines = 0
    first_byte = None
    body = bytearray() if "format=csv" not in url else None
    with urllib.request.urlopen(req, timeout=900) as resp:
        content_type = resp.headers.get("Content-Type")
        while True:
            sample()
            chunk = resp.read(65536)
            if not chunk:
                break
            if first_byte is None:
                first_byte = time.perf_counter() - started
            size += len(chunk)
            lines += chunk.count(b"\n")
            if body is not None:
                body += chunk
    out = {
        "content_type": content_type,
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 2),
        "first_byte_seconds": round(first_byte or 0.0, 3),
    }
    if body is None:
        out["rows"] = lines - 1  # the header
    else:
        answer = json.loads(body)
        assert answer["success"], answer
        out["rows"] = len(answer["data"])
    return out


class RssSampler:
    """The peak VmRSS of a process, sampled every 10 ms in a thread while in the block
    (and whenever `sample()` is called), with its VmHWM at the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = rss_kb(pid)
        self._stop = threading.Event()

    def sample(self) -> None:
        self.peak_kb = max(self.peak_kb, rss_kb(self.pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.01)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, rss_kb(self.pid, "VmHWM"))


def export_once(url: str, workdir: Path, path: str, token: str, user: int) -> dict:
    """GET `path` from a gunicorn of its own with one sync worker, that worker's RSS
    sampled while the answer streams, against its RSS just before (after one small
    warm-up request)."""
    end = data.PERIOD_END - 1
    with gunicorn_server(url, workdir, 1, on_stop=lambda: abandon_queries(url), timeout=900) as (base, master):
        worker = wait_for(lambda: children(master.pid), 30, "the gunicorn worker")[0]
        fetch(f"{base}/api/data/?granularity=day&start_timestamp={end - DAY}&end_timestamp={end}", token, user)
        idle = rss_kb(worker)
        with RssSampler(worker) as rss:
            got = download(base + path, token, user, rss.sample)
    got.update(
        idle_rss_mb=round(idle / 1024, 1),
        peak_rss_mb=round(rss.peak_kb / 1024, 1),
        growth_mb=round((rss.peak_kb - idle) / 1024, 1),
    )
    return got


def figure_8(url: str, workdir: Path, exports: dict[str, tuple[str, ...]]) -> dict:
    """Each export (name -> its formats) of EXPORTS: 366 days by day, site-wide as the
    admin, in each format (csv, json) by export_once."""
    end = data.PERIOD_END - 1
    start = end - 366 * DAY
    admin = data.ADMIN_ID
    token = data.user_token(admin)
    out: dict[str, Any] = {"start": start, "end": end, "days": 366}
    for name, formats in exports.items():
        group_by = EXPORTS[name]
        out[name] = {"group_by": group_by}
        for fmt in formats:
            path = f"/api/data/?group_by={group_by}&granularity=day&start_timestamp={start}&end_timestamp={end}"
            got = export_once(url, workdir, path + ("&format=csv" if fmt == "csv" else ""), token, admin)
            out[name][fmt] = got
            log(
                f"  fig 8 {name} {fmt}: {got['rows']:,} rows, {got['bytes']:,} bytes in {got['seconds']} s; worker RSS "
                f"{got['idle_rss_mb']} MB idle, peak {got['peak_rss_mb']} MB (+{got['growth_mb']} MB)"
            )
        if len(formats) == 2:
            assert out[name]["csv"]["rows"] == out[name]["json"]["rows"], f"{name}: CSV and JSON rows differ"
    if "model_channel" in exports:
        out["model_channel"]["reads"] = export_reads(url, start, end, EXPORTS["model_channel"])
    return out


def export_reads(url: str, start: int, end: int, group_by: str, repeats: int = 3) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of an export's statement (site-wide, by day, grouped by
    `group_by`), as the API makes it: with the five tables (days summed from
    hourly_detail_usage) and with the six-table design (a daily detail table beside
    them, bench/variants.py), alternately; the last of `repeats` runs each."""
    from api.params import GROUP_BY
    from shared import queries

    shape = queries.Shape(queries.grouped_columns([GROUP_BY[g] for g in group_by.split(",")]))
    view = queries.View(granularity="day")
    engine = make_engine(url)
    out: dict[str, Any] = {}
    with variants.daily_detail(engine):
        for i in range(repeats):
            for variant in ("five", "six") if i % 2 == 0 else ("six", "five"):
                with variants.summaries(variant), queries.snapshot(engine) as conn:
                    statement, params = queries.prepare(conn, shape, view, start, end)
                    out[variant] = explain_answer(conn, statement, params)
    engine.dispose()
    for variant, plan in out.items():
        log(
            f"  fig 8 export reads, {variant} tables: "
            + ", ".join(f"{t} {v['rows']:,} rows" for t, v in plan["tables"].items())
            + f"; {plan['rows_returned']:,} rows out in {plan['execution_ms']} ms"
        )
    return out


# --- figure 4: freshness ------------------------------------------------------------------


def figure_4(url: str, workdir: Path, probes: int, window: float) -> dict:
    """Probe logs committed at random instants over `window` seconds, for a user of their
    own; the API polled every 0.2 s with and without the real-time tail."""
    engine = make_engine(url)
    probe_id = data.ADMIN_ID + 1
    with engine.begin() as conn:
        conn.execute(sa.delete(m.users).where(m.users.c.id == probe_id))
        conn.execute(
            sa.insert(m.users).values(
                id=probe_id,
                username="probe",
                role=m.ROLE_USER,
                status=1,
                access_token=data.user_token(probe_id),
                password="",
            )
        )
    token = data.user_token(probe_id)
    committed: dict[str, float] = {}
    seen: dict[str, dict[str, float]] = {"realtime=false": {}, "realtime": {}}
    now = int(time.time())
    query = f"/api/data/self?granularity=hour&start_timestamp={now - 2 * HOUR}&end_timestamp={now + 2 * HOUR}"
    stop = threading.Event()

    def poll(base: str):
        while not stop.is_set():
            for mode, suffix in (("realtime=false", "&realtime=false"), ("realtime", "&realtime=true")):
                try:
                    body = fetch(base + query + suffix, token, probe_id)
                except OSError:
                    continue
                at = time.time()
                for row in body.get("data") or []:
                    seen[mode].setdefault(row["model_name"], at)
            stop.wait(0.2)

    rnd = random.Random(4)
    instants = sorted(rnd.uniform(0, window) for _ in range(probes))
    with celery_worker(url, workdir, beat=True), gunicorn(url, workdir, 2) as base:
        poller = threading.Thread(target=poll, args=(base,), daemon=True)
        poller.start()
        t0 = time.time()
        for k, offset in enumerate(instants):
            time.sleep(max(0.0, t0 + offset - time.time()))
            name = f"probe-{k}"
            with engine.begin() as conn:
                conn.execute(
                    sa.insert(m.logs).values(
                        user_id=probe_id,
                        username="probe",
                        created_at=int(time.time()),
                        type=m.LOG_CONSUME,
                        model_name=name,
                        quota=1,
                        prompt_tokens=1,
                        completion_tokens=1,
                    )
                )
            committed[name] = time.time()
        interval = Settings().rollup_interval_seconds
        wait_for(lambda: len(seen["realtime=false"]) == probes, interval * 2 + 60, "every probe to be rolled up")
        stop.set()
        poller.join(timeout=10)
    with engine.begin() as conn:
        # Leave the data set as it was: the probes' logs, rows and user go.
        conn.execute(sa.delete(m.logs).where(m.logs.c.user_id == probe_id))
        for s in agg.SUMMARIES:
            t = s.table
            if "user_id" in s.dimensions:
                conn.execute(sa.delete(t).where(t.c.user_id == probe_id))
            else:
                conn.execute(sa.delete(t).where(t.c.model_name.like("probe-%")))
        conn.execute(sa.delete(m.users).where(m.users.c.id == probe_id))
    engine.dispose()
    out: dict[str, Any] = {"probes": probes, "window_seconds": window, "beat_interval_seconds": interval}
    for mode, got in seen.items():
        delays = [got[n] - committed[n] for n in committed if n in got]
        if delays:
            out[mode] = {
                "median_seconds": round(statistics.median(delays), 2),
                "max_seconds": round(max(delays), 2),
                "seen": len(delays),
            }
    return out


# --- the run ------------------------------------------------------------------------------


def versions(url: str) -> dict:
    from importlib.metadata import version

    with make_engine(url).connect() as conn:
        pg = conn.exec_driver_sql("SHOW server_version").scalar()
    # wrk is needed by figure 3 only; the others run without it.
    wrk_path = shutil.which("wrk")
    wrk_version = (
        subprocess.run([wrk_path, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
        if wrk_path
        else "not installed"
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "python": platform.python_version(),
        "postgresql": pg,
        "sqlalchemy": sa.__version__,
        "celery": version("celery"),
        "flask": version("flask"),
        "gunicorn": version("gunicorn"),
        "wrk": wrk_version.strip(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
    }


# The exports of figure 8: name -> group_by. The first is issue 12's (day x model x
# channel, site-wide, 366 days); the second a much longer answer of the same kind, to see
# whether the memory of each format grows with the rows.
EXPORTS = {"model_channel": "model,channel", "user_model_token_channel": "user,model,token,channel"}
ALL_FIGURES = "1,2,3,4,7,8"


def parse_exports(text: str) -> dict[str, tuple[str, ...]]:
    """--exports: NAME (as CSV and as JSON) or NAME:FORMAT, comma-separated."""
    out: dict[str, tuple[str, ...]] = {}
    for item in text.split(","):
        name, _, fmt = item.partition(":")
        if name not in EXPORTS or fmt not in ("", "csv", "json"):
            raise argparse.ArgumentTypeError(f"not an export: {item!r}")
        out[name] = (fmt,) if fmt else ("csv", "json")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_rows, default=parse_rows("1M"), help="logs in the data set (1M, 10M)")
    parser.add_argument("--shape", choices=sorted(shapes.SHAPES), default=shapes.DEFAULT_SHAPE, help="the data shape")
    parser.add_argument(
        "--figures",
        default=ALL_FIGURES,
        help="which figures (5 comes with 1, 6 with 2; 9 on request; 'none': build only)",
    )
    parser.add_argument("--rebuild", action="store_true", help="build the data set again")
    parser.add_argument("--repeats", type=int, default=3, help="re-aggregation rounds in figures 1 and 9")
    parser.add_argument("--tick-rounds", type=int, default=9)
    parser.add_argument("--wrk-seconds", type=int, default=20)
    parser.add_argument("--api-workers", type=int, default=4)
    parser.add_argument("--probes", type=int, default=12)
    parser.add_argument("--probe-window", type=float, default=60.0)
    parser.add_argument(
        "--exports",
        default=",".join(EXPORTS),
        help=f"figure 8's exports, each NAME or NAME:csv or NAME:json (names: {', '.join(EXPORTS)})",
    )
    args = parser.parse_args(argv)
    figures = set(args.figures.split(",")) - {"none", ""}
    if shutil.which("wrk") is None and "3" in figures:
        parser.error("wrk is not installed: apt-get install wrk")
    started = time.perf_counter()
    url, meta = prepared(args.rows, args.shape, args.rebuild)
    name = f"{args.shape}_{data.size_label(args.rows)}"
    workdir = RESULTS / f"run-{name}"
    workdir.mkdir(parents=True, exist_ok=True)
    report = {
        "rows": args.rows,
        "shape": args.shape,
        "data": meta,
        "versions": versions(url),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    # Measured by the build (a data set built before that was recorded: measured now).
    report["storage"] = meta.get("storage") or data.storage(make_engine(url))
    if "1" in figures or "5" in figures:
        log("figure 1 and 5: full re-aggregation in real workers, vs bare GROUP BY: " + ", ".join(REAGGREGATIONS))
        report.update(figure_1_and_5(url, workdir, args.repeats))
    if "2" in figures or "6" in figures:
        log("figure 2 and 6: a tick of 10,000 logs: full history with five and four tables, empty history")
        report.update(figure_2(url, args.rows, args.tick_rounds, args.shape))
    if "9" in figures:
        log("figure 9: a full re-aggregation statement by statement: " + ", ".join(REAGGREGATIONS))
        report["issue12_reaggregation_statements"] = figure_9(url, args.repeats)
    if "7" in figures:
        log("figure 7: what today's answers read, five tables and four")
        report["issue12_reads"] = figure_7(url)
    if "8" in figures:
        log("figure 8: CSV and JSON exports of 366 days, the serving worker's RSS")
        report["issue12_csv"] = figure_8(url, workdir, parse_exports(args.exports))
    if "3" in figures:
        log("figure 3: the API under wrk")
        report["fig3"] = figure_3(url, workdir, args.wrk_seconds, args.api_workers)
    if "4" in figures:
        log("figure 4: freshness with beat at its default interval")
        report["fig4"] = figure_4(url, workdir, args.probes, args.probe_window)
    report["seconds"] = took = round(time.perf_counter() - started, 1)
    out = RESULTS / f"{name}.json"
    measured = [k for k in report if k.startswith(("fig", "issue12_"))]
    if out.exists() and not set(ALL_FIGURES.split(",")) <= figures:
        # A partial run updates its figures and keeps the others, each with its run's start.
        previous = json.loads(out.read_text())
        previous.setdefault("figure_runs", {})
        for key in measured:
            previous[key] = report[key]
            previous["figure_runs"][key] = report["started"]
        for key in ("versions", "data", "storage"):
            previous[key] = report[key]
        report = previous
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"done in {took} s; results in {out.relative_to(ROOT)}")
    print(json.dumps({k: report[k] for k in measured}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
