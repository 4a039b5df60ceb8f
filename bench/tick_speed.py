"""Issue 14's tick target: a tick of 10,000 logs, main's code ("before") against this tree's
("after"), on the full history and on an empty one, beside the write floor of its rows.

    git -C /work/main archive 1a12e1d | tar -x -C /tmp/tick-before   # the code before
    python -m bench.tick_speed --shape dense --rows 1M --before /tmp/tick-before
    python -m bench.tick_speed --shape sparse --rows 2M --before /tmp/tick-before
    python -m bench.tick_speed --shape dense --rows 1M --before /tmp/tick-before \
        --url mysql://root@127.0.0.1:3306/tick_dense_1m --copy-from usage_stats_bench_dense_1m

On a copy of the data set bench/run.py built (usage_stats_bench_<shape>_<size>, left
untouched) and on an empty database, each round adds the same 10,000 logs (bench.data's,
in the data's last hour, as figure 2 does) before each of four ticks: before and after, on
the history and on the empty database (emptied first, by TRUNCATE), the order rotating
each round.
Each tree ticks in a process of its own (PYTHONPATH = the tree), started once and told
when to tick, so both pay the same warm connection pool; a tick is timed there, whole
(lock, statements, commit), with its statements by kind.

The write floor: after each round, the rows of its "after" tick on the history (its logs,
grouped as each summary table keys them) inserted by a plain INSERT ... SELECT ...
GROUP BY into empty copies of the five summary tables (CREATE TABLE ... (LIKE ...
INCLUDING ALL): the same keys and indexes), in one transaction committed as the tick
commits (synchronous_commit off); emptied (TRUNCATE) after each round, untimed.

On MariaDB (`--url mysql://...`): the history is --url's database itself, a copy of the
data set made once (`--copy-from`: bench.http_cache.copy_to_mariadb, row for row, migrated,
rolled up; no TEMPLATE databases there), which each run grows by its logs; the empty
database is a MariaDB database of its own, migrated, with the data set's users, keys and
channels. bench.data's generator is PostgreSQL's SQL: each batch is generated in a
PostgreSQL database of its own (tick_speed_staging_<label>), its ids continuing the target's
(contiguous, as a gateway's are: no gap for the tick to record), and copied row for row
(bench.databases.copy_rows). The floor's empty copies are CREATE TABLE ... LIKE (keys and
indexes), emptied one by one (TRUNCATE commits there: between rounds, untimed); they
commit as a MariaDB tick does, durably.

Reported: medians, the dense tick in ms (target < 50), tick / write floor (sparse target
<= 1.5), full / empty (target <= 1.2), after / before; results in
bench/results/tick_speed_<shape>_<size>.json (tick_speed_mariadb_<shape>_<size>.json), with the
load average at every round. The copies are dropped at the end (on MariaDB: the floor
tables, the empty and staging databases; --url's database stays).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shared import aggregation as agg
from shared import models as m
from shared import rollup
from shared.config import Settings
from shared.db import make_engine

HERE = Path(__file__).resolve().parent.parent
BATCH = 10_000
TREES = ("before", "after")
CASES = tuple((tree, db) for tree in TREES for db in ("history", "empty"))
# What a statement does, for the statement table: its verb and the table it names.
KIND = re.compile(
    r"\s*(WITH \w+|INSERT INTO \w+|UPDATE \w+|DELETE FROM \w+|CREATE TEMPORARY TABLE \w+|"
    r"DROP (?:TEMPORARY )?TABLE IF EXISTS \w+|"
    r"SELECT pg_\w+|SELECT|SET)",
    re.I,
)
# A read of information_schema (MariaDB's check_innodb and watermark): named by its table.
SCHEMA_TABLE = re.compile(r"\binformation_schema\.(\w+)", re.I)


# --- the tick server: one per tree, in a process whose PYTHONPATH is that tree -----------


def serve() -> None:
    """Read database URLs on stdin; for each, one tick there; write its timing as a JSON
    line on stdout."""
    engines: dict[str, Any] = {}
    spent: dict[str, float] = {}
    committing = [0.0]

    def before(conn, cursor, statement, parameters, context, executemany) -> None:
        conn.info["tick_speed_started"] = time.perf_counter()

    def after(conn, cursor, statement, parameters, context, executemany) -> None:
        found = KIND.match(statement)
        kind = found[1] if found else statement.split()[0]
        schema_table = SCHEMA_TABLE.search(statement) if kind.upper() == "SELECT" else None
        if schema_table:
            kind = f"SELECT information_schema.{schema_table[1]}"
        spent[kind] = spent.get(kind, 0.0) + (time.perf_counter() - conn.info.pop("tick_speed_started")) * 1000

    def timed_commit(commit: Any) -> Any:
        """The dialect's commit, timed: the lock's, the tick's and the unlock's commits, of
        which the tick's (waiting for its log to reach the disk, unless told not to)
        dominates. Part of "commit and python", shown as "of which commit"."""

        def do_commit(dbapi_connection: Any) -> None:
            started = time.perf_counter()
            commit(dbapi_connection)
            committing[0] += (time.perf_counter() - started) * 1000

        return do_commit

    for line in sys.stdin:
        url = line.strip()
        if url not in engines:
            engines[url] = make_engine(url)
            sa.event.listen(engines[url], "before_cursor_execute", before)
            sa.event.listen(engines[url], "after_cursor_execute", after)
            dialect = engines[url].dialect
            dialect.do_commit = timed_commit(dialect.do_commit)
        reads = pages_read(engines[url])
        spent.clear()
        committing[0] = 0.0
        started = time.perf_counter()
        result = rollup.tick(engines[url], Settings(database_url=url), wait=True)
        ms = (time.perf_counter() - started) * 1000
        statements = {k: round(v, 2) for k, v in spent.items()}
        statements["commit and python"] = round(ms - sum(spent.values()), 2)
        statements["of which commit"] = round(committing[0], 2)
        done = {"ms": ms, "logs": result.logs, "buckets": result.buckets, "statements": statements}
        if reads is not None:
            done["pages_read"] = pages_read(engines[url]) - reads
        print(json.dumps(done))
        sys.stdout.flush()


def pages_read(engine: Any) -> int | None:
    """MariaDB: pages InnoDB has read from disk, server-wide (other databases' reads too;
    with O_DIRECT, MariaDB's default, each is a read from the disk, not from the kernel's
    cache). None on PostgreSQL."""
    if engine.dialect.name != "mysql":
        return None
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_reads'").one()[1])


class Ticker:
    """The tick server of one code tree."""

    def __init__(self, tree: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=tree,
            env=env,
        )

    def tick(self, url: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(url + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the tick server exited with {self.proc.wait()}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# --- the write floor ---------------------------------------------------------------------


def floor_tables(conn: sa.Connection) -> dict[str, sa.TableClause]:
    """Empty copies of the summary tables (keys, indexes), named floor_<table>."""
    copies = {}
    for s in agg.SUMMARIES:
        name = f"floor_{s.table.name}"
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        if conn.dialect.name == "mysql":
            conn.exec_driver_sql(f"CREATE TABLE {name} LIKE {s.table.name}")
        else:
            conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE {s.table.name} INCLUDING ALL)")
        copies[s.table.name] = sa.table(name, *(sa.column(c.name) for c in s.table.columns))
    return copies


def write_floor(engine: Any, copies: dict[str, sa.TableClause], lo: int, hi: int) -> float:
    """ms to insert the consume logs with ids in (lo, hi] into the empty copies, grouped
    as each table keys them (one GROUP BY per table, as a plain rollup would); then the
    copies are emptied again, untimed."""
    rows = agg.log_rows(sa.and_(m.logs.c.id > lo, m.logs.c.id <= hi), agg.grain_buckets("UTC")).subquery()
    started = time.perf_counter()
    my = engine.dialect.name == "mysql"
    with engine.begin() as conn:
        if not my:
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")  # as a PostgreSQL tick commits
        for s in agg.SUMMARIES:
            key = [s.bucket(rows.c.hour, rows.c.day).label(agg.BUCKET) if k == agg.BUCKET else rows.c[k] for k in s.key]
            columns = [c.name for c in s.table.columns]
            conn.execute(sa.insert(copies[s.table.name]).from_select(columns, agg.aggregate(rows, key, s.values)))
    took = (time.perf_counter() - started) * 1000
    truncate(engine, [t.name for t in copies.values()])
    return took


def truncate(engine: Any, tables: list[str]) -> None:
    """Empty these tables (one by one on MariaDB, where TRUNCATE takes one table)."""
    with engine.begin() as conn:
        if engine.dialect.name == "mysql":
            for name in tables:
                conn.exec_driver_sql(f"TRUNCATE TABLE {name}")
        else:
            conn.exec_driver_sql("TRUNCATE " + ", ".join(tables))


# --- the run -----------------------------------------------------------------------------


def copy_database(source: str, name: str) -> str:
    """`name` := a copy of database `source` (retried while someone is connected to it)."""
    from .run import admin_engine, database_url, log

    with admin_engine().connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for attempt in range(60):
            try:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
                break
            except sa.exc.OperationalError as exc:
                if "being accessed by other users" not in str(exc) or attempt == 59:
                    raise
                log(f"  {source} is in use; retrying")
                time.sleep(5)
    return database_url(name)


def main(argv: list[str] | None = None) -> int:
    from shared.migrate import upgrade

    from . import data, databases, shapes
    from .http_cache import copy_to_mariadb
    from .run import HOUR, RESULTS, admin_engine, database_url, log, parse_rows, recreate_database

    parser = argparse.ArgumentParser(prog="python -m bench.tick_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_rows, default=parse_rows("1M"))
    parser.add_argument("--shape", choices=sorted(shapes.SHAPES), default=shapes.DEFAULT_SHAPE)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the code before")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--url",
        help="the history's database: PostgreSQL (copied by TEMPLATE; default bench.run's of --shape and --rows) "
        "or MariaDB (a copy of the data set, used in place)",
    )
    parser.add_argument("--copy-from", help="a PostgreSQL database bench.run built, copied into --url's MariaDB first")
    parser.add_argument("--suffix", default="", help="appended to the results file's name (a variant)")
    args = parser.parse_args(argv)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    my = args.url is not None and make_engine(args.url).dialect.name == "mysql"
    label = ("mariadb_" if my else "") + f"{args.shape}_{data.size_label(args.rows)}"
    source = data.database_name(args.shape, args.rows)
    staging: Any = None
    if my:
        # The batches are generated on PostgreSQL (the staging database) and copied.
        names = {"empty": f"tick_speed_empty_{label}", "staging": f"tick_speed_staging_{label}"}
        if args.copy_from:
            log(f"copying {args.copy_from} into {args.url}")
            copy_to_mariadb(database_url(args.copy_from), args.url)
        urls = {"history": args.url, "empty": databases.recreate_mariadb(args.url, names["empty"])}
        staging = make_engine(recreate_database(names["staging"]))
        upgrade(staging)
    else:
        names = {"history": f"tick_speed_{label}", "empty": "tick_speed_empty"}
        if args.url:
            source = make_engine(args.url).url.database or source
        log(f"copying {source} into {names['history']}")
        urls = {"history": copy_database(source, names["history"])}
        urls["empty"] = recreate_database(names["empty"])
    engines = {db: make_engine(u) for db, u in urls.items()}
    upgrade(engines["empty"])
    if my:
        # The data set's users, keys and channels, row for row, where both databases have the table.
        gateway = make_engine(database_url(args.copy_from or source))
        have = set(sa.inspect(gateway).get_table_names()) & set(sa.inspect(engines["empty"]).get_table_names())
        for table in (m.users, m.tokens, m.channels):
            if table.name in have:
                databases.copy_rows(gateway, engines["empty"], table)
        gateway.dispose()
    else:
        with engines["empty"].begin() as conn:
            data.create_gateway(conn)
    trace_len = 0
    for engine in [staging] if my else engines.values():
        with engine.begin() as conn:
            trace_len = data.load_traces(conn)
    with engines["history"].begin() as conn:
        copies = floor_tables(conn)
    # The last log id of each database, which a batch's ids continue (MariaDB: they come
    # from the staging database's sequence, set to it).
    top = {db: 0 for db in engines}
    with engines["history"].connect() as conn:
        top["history"] = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar() or 0
        history_logs = conn.execute(sa.select(sa.func.count()).select_from(m.logs)).scalar_one()
        server = conn.exec_driver_sql("SELECT version()").scalar_one()
    tickers = {"before": Ticker(args.before.resolve()), "after": Ticker(HERE)}
    got: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in CASES}
    floors: list[float] = []
    loads: list[list[float]] = []
    first = args.rows

    def add_logs(db: str) -> tuple[int, int]:
        """The round's logs into `db` (emptied first if it is the empty one): their id range."""
        if db == "empty":
            # Empty, not full of dead rows (the ids go on, so the watermark holds).
            truncate(engines[db], [t.name for t in (m.logs, *(s.table for s in agg.SUMMARIES))])
        if not my:
            with engines[db].begin() as conn:
                lo = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar() or 0
                data.generate_logs(conn, first, BATCH, data.PERIOD_END - HOUR, HOUR, trace_len, args.shape)
                hi = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar_one()
            return lo, hi
        lo = top[db]
        with staging.begin() as conn:
            conn.exec_driver_sql("TRUNCATE logs")
            conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('logs', 'id'), {max(lo, 1)}, {lo > 0})")
            data.generate_logs(conn, first, BATCH, data.PERIOD_END - HOUR, HOUR, trace_len, args.shape)
            hi = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar_one()
        databases.copy_rows(staging, engines[db], m.logs)
        top[db] = hi
        return lo, hi

    try:
        for i in range(args.rounds):
            k = i % len(CASES)
            for tree, db in CASES[k:] + CASES[:k]:
                ids = add_logs(db)
                got[(tree, db)].append(tickers[tree].tick(urls[db]) | {"ids": ids})
            floors.append(write_floor(engines["history"], copies, *got[("after", "history")][-1]["ids"]))
            loads.append([round(x, 2) for x in os.getloadavg()])
            first += BATCH
            log(
                f"  round {i + 1}: "
                + ", ".join(f"{t} {d} {got[(t, d)][-1]['ms']:.1f} ms" for t, d in CASES)
                + f", floor {floors[-1]:.1f} ms, load {loads[-1][0]}"
            )
    finally:
        for t in tickers.values():
            t.close()
        if my:
            with engines["history"].begin() as conn:
                for copy in copies.values():
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {copy.name}")
        for e in [*engines.values(), *([staging] if my else [])]:
            e.dispose()
        if my:
            with databases.mariadb_admin(args.url).begin() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{names['empty']}`")
        with admin_engine().connect() as conn:
            for name in names.values() if not my else [names["staging"]]:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    med = {f"{t}_{d}": statistics.median(r["ms"] for r in got[(t, d)]) for t, d in CASES}
    floor = statistics.median(floors)

    def statement_medians(case: tuple[str, str]) -> dict[str, float]:
        kinds = sorted({k for r in got[case] for k in r["statements"]})
        return {k: round(statistics.median(r["statements"].get(k, 0.0) for r in got[case]), 2) for k in kinds}

    out: dict[str, Any] = {
        "shape": args.shape,
        "rows": args.rows,
        "rounds": args.rounds,
        "batch": BATCH,
        "started": started_at,
        "database": "mariadb" if my else "postgresql",
        "server": server,
        "history": make_engine(urls["history"]).url.render_as_string(hide_password=True) if my else source,
        "history_logs_at_start": history_logs,
        "consume_logs_per_tick": got[("after", "history")][0]["logs"],
        "finest_rows_per_tick": got[("after", "history")][0]["buckets"],
        "median_ms": {k: round(v, 1) for k, v in med.items()} | {"write_floor": round(floor, 1)},
        "tick_over_floor": {t: round(med[f"{t}_history"] / floor, 2) for t in TREES},
        "full_over_empty": {t: round(med[f"{t}_history"] / med[f"{t}_empty"], 2) for t in TREES},
        "after_over_before": {
            d: round(statistics.median(a["ms"] / b["ms"] for a, b in zip(got[("after", d)], got[("before", d)])), 2)
            for d in ("history", "empty")
        },
        "targets": {"dense_tick_ms": 50, "sparse_tick_over_floor": 1.5, "full_over_empty": 1.2},
        "tick_ms": {f"{t}_{d}": [round(r["ms"], 1) for r in got[(t, d)]] for t, d in CASES},
        "floor_ms": [round(f, 1) for f in floors],
        "load_average": loads,
        "statement_ms": {f"{t}_{d}": statement_medians((t, d)) for t, d in CASES},
    }
    if my:
        # Server-wide, so other databases' reads too: an upper bound on the tick's own.
        out["pages_read_from_disk"] = {
            f"{t}_{d}": {
                "median": statistics.median(r["pages_read"] for r in got[(t, d)]),
                "each": [r["pages_read"] for r in got[(t, d)]],
            }
            for t, d in CASES
        }
    path = RESULTS / f"tick_speed_{label}{args.suffix}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    log(f"results in {path}")
    keys = ("median_ms", "tick_over_floor", "full_over_empty", "after_over_before")
    print(json.dumps({k: out[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        raise SystemExit(main())
