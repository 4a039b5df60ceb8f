"""Every benchmark figure of BENCHMARKS.md, in one run, side by side.

    python -m bench.run --rows 1M     # all five figures, under 5 minutes
    python -m bench.run --rows 10M    # the same at 10M logs

Needs PostgreSQL (BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres),
Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/14) and wrk (Debian's package).
The data set is built once per size in its own database (usage_stats_bench_1m, ...) and
reused by later runs (--rebuild builds it again). Every figure is a ratio of two things
measured in this run, alternately, or a median of several runs: this machine is noisy.

Figures (targets from issue 5):
1. full re-aggregation / bare GROUP BY over the same logs            (<= 1.5)
2. tick of 10,000 new logs on the full history / on an empty history (<= 2, tick < 100 ms)
3. API under wrk: /self heavy user 30 days hourly, site-wide 30 days daily, and the same
   answers computed from raw logs (>= 1000 req/s and p99 <= 25 ms for /self; >= 100x raw
   for the site-wide answer)
4. freshness: seconds from a log's commit to its appearance in the API (beat at its
   default interval; and with the real-time tail)
5. worker peak RSS during the full re-aggregation                    (<= 300 MB)
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

from . import data

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


def label(rows: int) -> str:
    return f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else f"{rows // 1000}k"


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


def prepared(rows: int, rebuild: bool) -> tuple[str, dict]:
    """The benchmark database of this size: built (logs, users, a full rollup), or reused."""
    name = f"usage_stats_bench_{label(rows)}"
    url = database_url(name)
    if not rebuild:
        try:
            with make_engine(url).connect() as conn:
                meta = json.loads(conn.exec_driver_sql("SELECT info FROM bench_meta").scalar())
            if meta.get("rows") == rows and meta.get("complete"):
                log(f"reusing {name} (built {meta['built']}; --rebuild to build it again)")
                upgrade(make_engine(url))  # the schema of the code being measured
                return url, meta
        except sa.exc.SQLAlchemyError:
            pass
    log(f"building {name}: {rows:,} logs")
    url = recreate_database(name)
    engine = make_engine(url)
    upgrade(engine)
    meta = data.build(engine, rows)
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
def gunicorn(url: str, workdir: Path, workers: int, on_stop=None):
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
        yield base


@contextmanager
def celery_worker(url: str, workdir: Path, *, beat: bool = False):
    """A real worker (prefork, one child, as the product runs it), optionally with beat
    at the default interval; both on Redis."""
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    env = service_env(url)
    env.pop("ROLLUP_INTERVAL_SECONDS", None)  # the default interval
    wlog = workdir / "worker.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "--pool=prefork",
        "--concurrency=1",
        "-l",
        "INFO",
        "-n",
        f"bench-{os.getpid()}@%h",
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


def bare_group_by(engine) -> float:
    """The floor: the aggregation alone, every output row computed (EXPLAIN ANALYZE runs
    it to the end without shipping rows to us), best of default and our session settings."""
    best = None
    for settings in ((), FLOOR_SETTINGS):
        with engine.connect() as conn:
            for s in settings:
                conn.exec_driver_sql(s)
            started = time.perf_counter()
            conn.exec_driver_sql("EXPLAIN (ANALYZE, TIMING OFF) " + BARE).all()
            took = time.perf_counter() - started
        best = took if best is None else min(best, took)
    return best


def reaggregate_in_worker(app, url: str, worker_pid: int, start: int, end: int) -> dict:
    """Hand a full re-aggregation to the real worker (as POST /api/data/reaggregate does),
    sample the RSS of its processes until it is done, return the task's own timing."""
    from worker.app import REAGGREGATE_TASK

    result = app.send_task(REAGGREGATE_TASK, args=[start, end])
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


def figure_1_and_5(url: str, workdir: Path, repeats: int) -> dict:
    from worker import make_celery

    engine = make_engine(url)
    app = make_celery(Settings.from_env(service_env(url)))
    bare, verify, rebuild, rss = [], [], [], []

    def one_round(worker, times: list, what: str) -> None:
        bare.append(bare_group_by(engine))
        out = reaggregate_in_worker(app, url, worker.pid, data.PERIOD_START, data.PERIOD_END)
        times.append(out["seconds"])
        rss.append(out["peak_rss_mb"])
        log(
            f"  fig 1 {what}: bare {bare[-1]:.2f} s, re-aggregation {times[-1]:.2f} s "
            f"({out['logs']:,} logs, {out['chunks']} chunks), worker RSS {out['peak_rss_mb']}"
        )

    with celery_worker(url, workdir) as worker:
        for i in range(repeats):
            one_round(worker, verify, f"round {i + 1}, history unchanged")
        # The other case: the summary rows are gone (a new STATS_TIMEZONE, a first
        # install beside an old gateway) and every row must be written.
        with engine.begin() as conn:
            for s in agg.SUMMARIES:
                conn.execute(sa.delete(s.table))
        vacuum_summaries(engine)
        one_round(worker, rebuild, "into empty tables")
    vacuum_summaries(engine)
    engine.dispose()
    floor = statistics.median(bare)
    return {
        "fig1": {
            "bare_seconds": bare,
            "reaggregate_unchanged_seconds": verify,
            "reaggregate_rebuild_seconds": rebuild,
            "ratio_unchanged": round(statistics.median(verify) / floor, 2),
            "ratio_rebuild": round(rebuild[0] / floor, 2),
            "target": 1.5,
        },
        "fig5": {
            "peak_rss_mb": rss,
            "worst_child_mb": max(r["child"] for r in rss),
            "worst_main_mb": max(r["main"] for r in rss),
            "target_mb": 300,
        },
    }


# --- figure 2: a tick of 10,000 new logs on the full history vs on an empty one -------------


def figure_2(url: str, rows: int, rounds: int, batch: int = 10_000) -> dict:
    big = make_engine(url)
    empty_url = recreate_database("usage_stats_bench_empty")
    empty = make_engine(empty_url)
    upgrade(empty)
    with empty.begin() as conn:
        data.create_users(conn)
        data.load_traces(conn)
    with big.begin() as conn:
        trace_len = data.load_traces(conn)
        top = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar()
    times = {"history": [], "empty": []}
    counted = {"history": [], "empty": []}
    try:
        for i in range(rounds):
            # Alternate which goes first, so that neither always runs on a warmer machine.
            order = [("history", big, url), ("empty", empty, empty_url)]
            for name, engine, u in order if i % 2 == 0 else order[::-1]:
                with engine.begin() as conn:
                    if name == "empty":
                        # An empty history every round: the previous round's rows go
                        # (ids go on from the sequence, so the watermark stays valid).
                        for t in (m.logs, *(s.table for s in agg.SUMMARIES)):
                            conn.execute(sa.delete(t))
                    # New logs in the data's last hour, as a gateway writes them.
                    data.generate_logs(conn, rows + i * batch, batch, data.PERIOD_END - HOUR, HOUR, trace_len)
                result = rollup.tick(engine, Settings(database_url=u), wait=True)
                times[name].append(result.seconds)
                counted[name].append(result.logs)
            log(
                f"  fig 2 round {i + 1}: tick on history {times['history'][-1] * 1000:.1f} ms, "
                f"on empty {times['empty'][-1] * 1000:.1f} ms ({counted['history'][-1]:,} consume logs)"
            )
    finally:
        # Put the big database back as it was: drop the added logs, re-aggregate their day.
        with big.begin() as conn:
            conn.execute(sa.delete(m.logs).where(m.logs.c.id > top))
            conn.exec_driver_sql("DROP TABLE IF EXISTS bench_trace")
        rollup.reaggregate(big, Settings(database_url=url), data.PERIOD_END - HOUR, data.PERIOD_END)
        big.dispose()
        empty.dispose()
        with admin_engine().connect() as conn:
            conn.exec_driver_sql('DROP DATABASE IF EXISTS "usage_stats_bench_empty" WITH (FORCE)')
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "tick_seconds": times,
        "consume_logs_per_tick": counted["history"][0],
        "median_ms": {k: round(v * 1000, 1) for k, v in med.items()},
        "ratio": round(med["history"] / med["empty"], 2),
        "target_ratio": 2,
        "target_tick_ms": 100,
    }


# --- figure 3: the API under wrk ----------------------------------------------------------


def _units(value: str) -> float:
    """wrk's latency ('812.00us', '3.21ms', '1.02s') in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
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
    result = {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "requests": int(re.search(r"(\d+) requests in", out)[1]),
    }
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


def figure_3(url: str, workdir: Path, seconds: int, workers: int) -> dict:
    end = data.PERIOD_END - 1
    start = end - 30 * DAY + 1
    heavy = 1  # the power law makes user 1 the heaviest
    admin = data.ADMIN_ID
    cases = {
        "self_hourly": (f"/data/self?granularity=hour&start_timestamp={start}&end_timestamp={end}", heavy),
        "site_daily": (f"/data/?granularity=day&start_timestamp={start}&end_timestamp={end}", admin),
        # Not a target: the same user's 30 days by day, to show the cost per request
        # when the answer is small (90 rows instead of 2,000).
        "self_daily": (f"/data/self?granularity=day&start_timestamp={start}&end_timestamp={end}", heavy),
    }
    out = {"workers": workers, "seconds": seconds, "connections": 32}
    for name, (path, user) in cases.items():
        # A server of its own per case: the raw-logs load leaves dozens of slow requests
        # queued behind it, which must not run into the next measurement.
        # Once told to stop, its workers finish the request at hand: end those statements.
        with gunicorn(url, workdir, workers, on_stop=lambda: abandon_queries(url)) as base:
            token = data.user_token(user)
            started = time.perf_counter()
            summary = fetch(f"{base}/api{path}", token, user)
            alone = {"api": time.perf_counter() - started}
            row = {"rows": len(summary["data"]), "bytes": len(json.dumps(summary))}
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
    seen = {"realtime=false": {}, "realtime": {}}
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
    out = {"probes": probes, "window_seconds": window, "beat_interval_seconds": interval}
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_rows, default=parse_rows("1M"), help="logs in the data set (1M, 10M)")
    parser.add_argument("--figures", default="1,2,3,4", help="which figures (5 comes with 1)")
    parser.add_argument("--rebuild", action="store_true", help="build the data set again")
    parser.add_argument("--repeats", type=int, default=3, help="re-aggregation rounds in figure 1")
    parser.add_argument("--tick-rounds", type=int, default=7)
    parser.add_argument("--wrk-seconds", type=int, default=20)
    parser.add_argument("--api-workers", type=int, default=4)
    parser.add_argument("--probes", type=int, default=12)
    parser.add_argument("--probe-window", type=float, default=60.0)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None and "3" in args.figures:
        parser.error("wrk is not installed: apt-get install wrk")
    started = time.perf_counter()
    url, meta = prepared(args.rows, args.rebuild)
    workdir = RESULTS / f"run-{label(args.rows)}"
    workdir.mkdir(parents=True, exist_ok=True)
    report = {"rows": args.rows, "data": meta, "versions": versions(url), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    figures = set(args.figures.split(","))
    if "1" in figures or "5" in figures:
        log("figure 1 and 5: full re-aggregation in the worker vs bare GROUP BY")
        report.update(figure_1_and_5(url, workdir, args.repeats))
    if "2" in figures:
        log("figure 2: a tick of 10,000 logs, full history vs empty")
        report["fig2"] = figure_2(url, args.rows, args.tick_rounds)
    if "3" in figures:
        log("figure 3: the API under wrk")
        report["fig3"] = figure_3(url, workdir, args.wrk_seconds, args.api_workers)
    if "4" in figures:
        log("figure 4: freshness with beat at its default interval")
        report["fig4"] = figure_4(url, workdir, args.probes, args.probe_window)
    report["seconds"] = took = round(time.perf_counter() - started, 1)
    out = RESULTS / f"{label(args.rows)}.json"
    if out.exists() and not {"1", "2", "3", "4"} <= figures:
        # A partial run updates its figures and keeps the others, each with its run's start.
        previous = json.loads(out.read_text())
        previous.setdefault("figure_runs", {})
        for key in [k for k in report if k.startswith("fig")]:
            previous[key] = report[key]
            previous["figure_runs"][key] = report["started"]
        previous["versions"] = report["versions"]
        report = previous
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"done in {took} s; results in {out.relative_to(ROOT)}")
    print(json.dumps({k: v for k, v in report.items() if k.startswith("fig")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
