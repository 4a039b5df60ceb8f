"""Conditional requests and full answers of /api/data/self under wrk (issue 14, target 1).

    python -m bench.http_cache --database usage_stats_etag_dense_1m
    python -m bench.http_cache --database ... --before /path/to/a/checkout/of/main
    python -m bench.http_cache --url mysql://root@127.0.0.1:3306/http_dense_1m --copy-from http_dense_1m

The heaviest user's 30 days by the hour (2,160 rows on the dense data), 32 connections,
against gunicorn on loopback (the API alone, `api:create_app()` with api.gunicorn_conf), on a
PostgreSQL database that bench.run built (`python -m bench.run --shape dense --rows 1M
--figures none`; a copy of it is best: the writer below adds logs), or any database by
`--url` (PostgreSQL or MariaDB). `--copy-from` fills --url's MariaDB database first, made
anew: the users, keys, channels and logs of a PostgreSQL database bench.run built, copied
row for row as bench.databases does, migrated and rolled up.

(a) conditional: every request sends If-None-Match with the answer's current tag, and
    must get 304 (a wrk script counts every other status). Targets: >= 1,000 req/s,
    p99 <= 50 ms.
(b) full answers while a writer process commits that user's logs throughout (one log
    per transaction, `--writer-rate` a second, in the range's last hour) and a tick
    runs every `--tick-every` seconds: the tail and the rollup's progress move all the
    time, so answers differ. Target: >= 300 req/s.
(c) the same full answers, with the same writer, served by the code before this change
    (`--before`: a checkout of it; run by this interpreter with its PYTHONPATH), one
    after the other with (b) in each round, for the ratio.
Also, for context: full answers with no writer, before and after.

Every wrk run also records the CPU time per request of the API's processes (gunicorn's
master and workers) and of the database's (PostgreSQL's backends of this database, the
writer's and ticks' included; MariaDB's whole server process), read from /proc before
and after, and the rate the machine's cores would serve at that cost (`cpu_bound_rps`):
a figure that, unlike the rate, does not depend on what else the machine runs.

Results go to bench/results/http_cache_<database>.json (http_cache_mariadb_<database>.json
for MariaDB), with the load average before and after every wrk run. Every figure is
measured here, on a shared machine: compare the ratios of one run, not absolute rates
across runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench import data, databases
from bench.run import PG_ADMIN, _units, children, cpu_seconds, free_port, heaviest_user, process, wait_for
from shared import models as m
from shared import rollup
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from shared.rollup import tick

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DAY = 86400

# Credentials on every request; with BENCH_ETAG also If-None-Match, and every response
# other than a 304 is counted (wrk's own count leaves 3xx out of its errors).
WRK_SCRIPT = """
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["New-Api-User"] = os.getenv("BENCH_USER")
local etag = os.getenv("BENCH_ETAG")
if etag ~= nil and etag ~= "" then wrk.headers["If-None-Match"] = etag end
local want = tonumber(os.getenv("BENCH_WANT_STATUS") or "200")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) other = 0 end
function response(status, headers, body) if status ~= want then other = other + 1 end end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("other") end
  io.write(string.format("OTHER_STATUS %d\\n", n))
end
"""


def database_url(name: str) -> str:
    return make_engine(PG_ADMIN).url.set(database=name).render_as_string(hide_password=False)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (gunicorn's master and workers)."""
    return [pid, *(p for c in children(pid) for p in process_tree(c))]


def database_pids(engine: Engine) -> list[int]:
    """The processes doing this database's work: PostgreSQL's backends connected to it
    (the writer's and the ticks' included), or MariaDB's one server process (which also
    serves every other client of the server)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            return [int(r[0]) for r in conn.exec_driver_sql(query)]
    found = subprocess.run(["pgrep", "-x", "mariadbd|mysqld"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


Processes = Callable[[], tuple[list[int], list[int]]]


def wrk(url: str, env: dict, seconds: int, script: Path, connections: int = 32, cpu: Processes | None = None) -> dict:
    """wrk's rate, statuses and latencies; with `cpu` (the API's and the database's
    processes), also their CPU time per request over the run: a cost that does not
    depend on what else the machine runs, unlike the rate."""
    load_before = os.getloadavg()
    pids = cpu() if cpu else ([], [])
    cpu_before = {p: cpu_seconds(p) for p in pids[0] + pids[1]}
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout=30s", "--latency", "-s", str(script), url],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=seconds + 90,
        check=True,
    ).stdout
    spent: list[float] = []
    if cpu:
        # Processes started during the run (a pool's new connection) count from zero.
        for group in cpu():
            spent.append(sum(cpu_seconds(p) - cpu_before.get(p, 0.0) for p in group))
    rate, requests = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    other = re.search(r"OTHER_STATUS (\d+)", out)
    if rate is None or requests is None or other is None:
        raise RuntimeError(f"wrk's output is not as expected: {out}")
    result: dict[str, Any] = {
        "requests_per_second": float(rate[1]),
        "requests": int(requests[1]),
        "unexpected_status": int(other[1]),
        # The machine is shared: how busy it was, from before the run to its end.
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = round(_units(found[1]), 2) if found else None
    errors = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = errors[1] if errors else ""
    if spent and result["requests"]:
        api_ms, db_ms = (round(x / result["requests"] * 1000, 3) for x in spent)
        result["cpu_ms_per_request"] = {"api": api_ms, "database": db_ms}
        # What the machine's cores would serve at that cost if nothing else ran (wrk
        # itself included): the ceiling the rate is measured against.
        result["cpu_bound_rps"] = round((os.cpu_count() or 1) * 1000 / (api_ms + db_ms), 1)
    return result


@contextmanager
def server(url: str, tree: Path, workers: int, workdir: Path, name: str):
    """gunicorn serving `tree`'s API (its code first on PYTHONPATH), with that tree's
    own gunicorn settings (api.gunicorn_conf: threads per worker, where it sets them)."""
    port = free_port()
    logfile = workdir / f"gunicorn-{name}.log"
    env = dict(os.environ, DATABASE_URL=url, PYTHONPATH=str(tree), LOG_FORMAT="plain")
    # Started in `tree`: gunicorn puts its working directory first on sys.path.
    cmd = ["env", f"--chdir={tree}", sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf"]
    cmd += ["--bind", f"127.0.0.1:{port}"]
    cmd += ["--workers", str(workers), "api:create_app()"]
    with process(cmd, env, logfile) as proc:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return urllib.request.urlopen(base + "/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_for(up, 60, "gunicorn", proc, logfile)
        yield base, proc.pid


def get(url: str, token: str, user: int, etag: str | None = None) -> tuple[int, str | None, bytes]:
    headers = {"Authorization": f"Bearer {token}", "New-Api-User": str(user)}
    if etag:
        headers["If-None-Match"] = etag
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=120) as r:
            return r.status, r.headers.get("ETag"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("ETag"), e.read()


# --- the writer ----------------------------------------------------------------------


def _writer(url: str, user: int, lo: int, hi: int, rate: float, tick_every: float, stop, counts) -> None:
    """Commit `rate` logs a second of `user` (copies of their own logs, created in [lo,
    hi)), one per transaction, and run a tick every `tick_every` seconds, until `stop`."""
    engine = make_engine(url)
    settings = Settings(database_url=url)
    lg = m.logs.c
    with engine.connect() as conn:
        samples = (
            conn.execute(
                sa.select(lg.id).where(lg.user_id == user, lg.type == m.LOG_CONSUME).order_by(lg.id).limit(500)
            )
            .scalars()
            .all()
        )
    copied = [c for c in m.logs.c if c.name not in ("id", "created_at")]
    rnd = random.Random(7)
    next_tick = time.monotonic() + tick_every
    started = time.monotonic()
    written = ticks = 0
    while not stop.is_set():
        with engine.begin() as conn:
            conn.execute(
                sa.insert(m.logs).from_select(
                    [c.name for c in copied] + ["created_at"],
                    sa.select(*copied, sa.literal(rnd.randrange(lo, hi), sa.BigInteger)).where(
                        lg.id == rnd.choice(samples)
                    ),
                )
            )
        written += 1
        if tick_every and time.monotonic() >= next_tick:
            tick(engine, settings, wait=True)
            ticks += 1
            next_tick = time.monotonic() + tick_every
        delay = started + written / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    counts["logs"], counts["ticks"], counts["seconds"] = written, ticks, time.monotonic() - started
    engine.dispose()


@contextmanager
def writer(url: str, user: int, lo: int, hi: int, rate: float, tick_every: float):
    ctx = multiprocessing.get_context("spawn")
    stop, counts = ctx.Event(), ctx.Manager().dict()
    proc = ctx.Process(target=_writer, args=(url, user, lo, hi, rate, tick_every, stop, counts))
    proc.start()
    stats: dict[str, Any] = {}
    try:
        time.sleep(1)  # running before the load starts
        yield stats
    finally:
        stop.set()
        proc.join(60)
        stats.update(dict(counts))
        if stats.get("seconds"):
            stats["logs_per_second"] = round(stats["logs"] / stats["seconds"], 1)


def copy_to_mariadb(source: str, url: str) -> None:
    """`url`'s MariaDB database made anew from the PostgreSQL database `source`: its
    gateway rows copied (bench.databases.copy_gateway), migrated, rolled up."""
    target = make_engine(databases.recreate_mariadb(url, str(make_engine(url).url.database)))
    upgrade(target)
    started = time.perf_counter()
    copied = databases.copy_gateway(make_engine(source), target)
    result = rollup.rollup(target, Settings(database_url=url), wait=True)
    print(f"copied {copied} and rolled up {result.logs} logs in {time.perf_counter() - started:.0f} s", flush=True)


def _processes(gunicorn: int, engine: Engine) -> tuple[list[int], list[int]]:
    return process_tree(gunicorn), database_pids(engine)


# --- the run -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="usage_stats_etag_dense_1m", help="a database bench.run built")
    parser.add_argument("--url", help="a DATABASE_URL instead of --database (PostgreSQL or MariaDB)")
    parser.add_argument("--copy-from", help="a PostgreSQL database to copy into --url's MariaDB database first")
    parser.add_argument("--suffix", default="", help="appended to the results file's name (a variant)")
    parser.add_argument("--before", type=Path, help="a checkout of the code before (for (c))")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="(b) and (c) one after the other, this many times")
    parser.add_argument("--writer-rate", type=float, default=100.0, help="logs a second during (b) and (c)")
    parser.add_argument("--tick-every", type=float, default=10.0, help="seconds between ticks during (b) and (c)")
    args = parser.parse_args()

    url = args.url or database_url(args.database)
    engine = make_engine(url)
    label = args.database
    if args.url:
        label = engine.url.database or ""
        label = label if engine.dialect.name == "postgresql" else f"mariadb_{label}"
    if args.copy_from:
        copy_to_mariadb(database_url(args.copy_from), url)
    upgrade(engine)  # the schema of the code measured (0005: rollup_state.generation)
    tick(engine, Settings(database_url=url), wait=True)
    heavy = heaviest_user(url)
    token = data.user_token(heavy)
    end = data.PERIOD_END - 1
    start = end - 30 * DAY + 1
    path = f"/api/data/self?granularity=hour&start_timestamp={start}&end_timestamp={end}"
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"http_cache_{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "wrk_etag.lua"
    script.write_text(WRK_SCRIPT)
    auth = {"BENCH_TOKEN": token, "BENCH_USER": str(heavy)}
    trees = {"after": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    out: dict[str, Any] = {
        "database": label,
        "dialect": engine.dialect.name,
        "url": engine.url.render_as_string(hide_password=True),
        "copied_from": args.copy_from,
        "path": path,
        "heavy_user": heavy,
        "connections": 32,
        "workers": args.workers,
        "seconds": args.seconds,
        "writer_rate": args.writer_rate,
        "tick_every": args.tick_every,
        "cpus": os.cpu_count(),
        "trees": {k: str(v) for k, v in trees.items()},
    }

    def log(text: str) -> None:
        print(text, flush=True)

    def show(name: str, r: dict) -> None:
        log(
            f"{name}: {r['requests_per_second']:.1f} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
            f"{r['requests']} requests, {r['unexpected_status']} unexpected status, "
            f"CPU ms per request {r.get('cpu_ms_per_request')} (bound {r.get('cpu_bound_rps')} req/s)"
        )

    # (a) conditional requests, and full answers of an idle database, each tree.
    for name, tree in trees.items():
        with server(url, tree, args.workers, workdir, name) as (base, pid):
            cpu = partial(_processes, pid, engine)
            status, tag, body = get(base + path, token, heavy)
            assert status == 200, body[:300]
            assert tag is not None or name == "before", (name, tag)  # a before tree may have no ETags
            out.setdefault("rows", len(json.loads(body)["data"]))
            out.setdefault("bytes", len(body))
            full = wrk(base + path, {**auth, "BENCH_WANT_STATUS": "200"}, args.seconds, script, cpu=cpu)
            show(f"full answers, idle, {name}", full)
            out[f"full_idle_{name}"] = full
            if tag is not None:
                assert get(base + path, token, heavy, tag)[0] == 304
                conditional = wrk(
                    base + path, {**auth, "BENCH_ETAG": tag, "BENCH_WANT_STATUS": "304"}, args.seconds, script, cpu=cpu
                )
                show(f"(a) conditional, 304, {name}", conditional)
                out["a_conditional" if name == "after" else "a_conditional_before"] = conditional

    # (b) and (c): full answers while the writer commits that user's logs.
    out["b_full_writer_after"], out["c_full_writer_before"], out["writer"] = [], [], []
    for _ in range(args.rounds):
        for name, tree in trees.items():
            with server(url, tree, args.workers, workdir, name) as (base, pid):
                cpu = partial(_processes, pid, engine)
                # Logs arrive now: in the range's last hour (its newest buckets).
                with writer(url, heavy, end - 3600, end, args.writer_rate, args.tick_every) as stats:
                    tags = set()
                    for _ in range(3):
                        tags.add(get(base + path, token, heavy)[1])
                        time.sleep(0.05)
                    r = wrk(base + path, {**auth, "BENCH_WANT_STATUS": "200"}, args.seconds, script, cpu=cpu)
                r["writer"] = stats
                if name == "after":
                    r["distinct_tags_of_3_requests"] = len(tags)
                show(f"full answers with the writer, {name} (writer {stats.get('logs_per_second')} logs/s)", r)
                out["b_full_writer_after" if name == "after" else "c_full_writer_before"].append(r)

    def median(key: str, pick: Callable[[dict], float | None]) -> float | None:
        found = [v for v in map(pick, out.get(key) or []) if v is not None]
        return statistics.median(found) if found else None

    def rate(r: dict) -> float:
        return float(r["requests_per_second"])

    def api_cpu(r: dict) -> float | None:
        # The API's CPU per request: what the code measured changes, whatever else runs.
        return r["cpu_ms_per_request"]["api"] if r.get("cpu_ms_per_request") else None

    after, before = median("b_full_writer_after", rate), median("c_full_writer_before", rate)
    cpu_after, cpu_before = median("b_full_writer_after", api_cpu), median("c_full_writer_before", api_cpu)
    out["summary"] = {
        "a_rps": out["a_conditional"]["requests_per_second"],
        "a_p99_ms": out["a_conditional"]["p99_ms"],
        "b_rps_median": after,
        "c_rps_median": before,
        "b_over_c": round(after / before, 2) if after and before else None,
        "b_api_cpu_ms_median": cpu_after,
        "c_api_cpu_ms_median": cpu_before,
        "b_over_c_api_cpu": round(cpu_after / cpu_before, 2) if cpu_after and cpu_before else None,
        "targets": {"a_rps": 1000, "a_p99_ms": 50, "b_rps": 300},
    }
    log(json.dumps(out["summary"]))
    del out["writer"]
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"http_cache_{label}{args.suffix}.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    log(f"written to {target}")


if __name__ == "__main__":
    main()
