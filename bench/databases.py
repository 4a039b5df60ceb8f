"""PostgreSQL beside MariaDB: the same logs, the same code paths, measured in one run.

    python -m bench.databases --rows 1M --shape dense

The logs are generated once, on PostgreSQL, by bench/data.py (its generator is SQL that
only PostgreSQL runs: generate_series, hashint8, COPY), into a bench database of their
own (usage_stats_bench_db_pg); then users, keys, channels and logs are copied row for row,
ids included, into a MariaDB database of their own (usage_stats_bench_db_my). Both
databases are migrated by shared.migrate.upgrade and rolled up by shared.rollup, as the
product does, with Settings(database_url=...). The figures, each database beside the
other, the order alternating each round where there are rounds:

1. the first rollup of the whole history (ticks until caught up);
2. a tick of 10,000 new logs in the data's last hour on the full history (the same logs,
   generated on PostgreSQL and copied, for both);
3. a full re-aggregation of the history over the bare GROUP BY of the same logs by
   (hour, user, model) on the same database, run to the end without shipping rows
   (EXPLAIN ANALYZE on PostgreSQL, ANALYZE on MariaDB);
4. /api/data/self's query for the heaviest user, 30 days by the hour
   (shared.queries.user_usage on a snapshot connection), and the rows it returns, which
   must be the same on both;
5. what the summary tables and the logs take on disk per million consume logs
   (pg_total_relation_size; data_length + index_length of information_schema.tables
   after ANALYZE TABLE on MariaDB, which InnoDB estimates from its page counts).

Exactness is checked after the first rollup and again at the end: every summary table
holds the same rows, SUM(count) and SUM(quota) on both databases.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared import aggregation as agg
from shared import models as m
from shared import queries, rollup
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade

from . import data

PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MY_ADMIN = os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
PG_DB = "usage_stats_bench_db_pg"
MY_DB = "usage_stats_bench_db_my"
HOUR = 3600
RESULTS = Path(__file__).resolve().parent / "results"
DATABASES = ("postgresql", "mariadb")

# The floor: consume logs grouped by (hour, user, model), every measure summed.
BARE = """
SELECT created_at - created_at % 3600 AS hour, user_id, model_name, count(*), sum(quota),
       sum(prompt_tokens + completion_tokens), sum(prompt_tokens), sum(completion_tokens)
FROM logs WHERE type = 2 AND created_at >= :lo AND created_at < :hi GROUP BY 1, 2, 3
"""
# As bench/run.py measures the floor on PostgreSQL: the best of these and the defaults.
PG_FLOOR_SETTINGS = ("SET jit = off", "SET work_mem = '64MB'")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_rows(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    for suffix, factor in (("m", 1_000_000), ("k", 1000)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * factor)
    return int(text)


# --- the two databases ----------------------------------------------------------------------


def recreate_pg() -> str:
    admin = make_engine(PG_ADMIN).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        conn.exec_driver_sql(f'CREATE DATABASE "{PG_DB}"')
    return admin.url.set(database=PG_DB).render_as_string(hide_password=False)


def recreate_my() -> str:
    return recreate_mariadb(MY_ADMIN, MY_DB)


def mariadb_admin(url: str) -> Engine:
    """An engine on the `mysql` database of `url`'s server, for creating and dropping others."""
    return make_engine(make_engine(url).url.set(database="mysql").render_as_string(hide_password=False))


def recreate_mariadb(url: str, name: str) -> str:
    """`name` made anew (empty, utf8mb4) on the MariaDB server of `url`; its URL."""
    with mariadb_admin(url).begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    return make_engine(url).url.set(database=name).render_as_string(hide_password=False)


def copy_rows(src: Engine, dst: Engine, table: sa.Table, where: Any = None, chunk: int = 20_000) -> int:
    """Every row of `table` (matching `where`) from src to dst, ids included."""
    query = sa.select(table).order_by(table.c.id)
    if where is not None:
        query = query.where(where)
    copied = 0
    with src.connect() as read, dst.begin() as write:
        result = read.execution_options(stream_results=True, yield_per=chunk).execute(query)
        names = list(result.keys())
        for part in result.partitions():
            write.execute(table.insert(), [dict(zip(names, row)) for row in part])
            copied += len(part)
    return copied


def copy_gateway(src: Engine, dst: Engine) -> dict[str, int]:
    """users, tokens, channels (where both have them) and logs; the logs' secondary
    indexes built after the load on MariaDB, as bench/data.py does on PostgreSQL."""
    out: dict[str, int] = {}
    with src.connect() as a, dst.connect() as b:
        have = set(sa.inspect(a).get_table_names()) & set(sa.inspect(b).get_table_names())
        my_indexes = {ix["name"] for ix in sa.inspect(b).get_indexes("logs")}
    for table in (m.users, m.tokens, m.channels):
        if table.name in have:
            out[table.name] = copy_rows(src, dst, table)
    dropped = [ix for ix in m.logs.indexes if ix.name in my_indexes]
    with dst.begin() as conn:
        for ix in dropped:
            conn.exec_driver_sql(f"DROP INDEX `{ix.name}` ON logs")
    out["logs"] = copy_rows(src, dst, m.logs)
    with dst.begin() as conn:
        for ix in dropped:
            ix.create(conn)
        for name in ("logs", *(t for t in ("users", "tokens", "channels") if t in have)):
            conn.exec_driver_sql(f"ANALYZE TABLE {name}").all()
    return out


# --- measures -------------------------------------------------------------------------------


def summary_totals(engine: Engine) -> dict[str, dict[str, int]]:
    out = {}
    with engine.connect() as conn:
        for s in agg.SUMMARIES:
            t = s.table
            rows, count, quota = conn.execute(
                sa.select(sa.func.count(), sa.func.sum(t.c["count"]), sa.func.sum(t.c.quota))
            ).one()
            out[t.name] = {"rows": int(rows), "count": int(count or 0), "quota": int(quota or 0)}
    return out


def bare_group_by(engine: Engine, lo: int, hi: int) -> float:
    """The aggregation alone, run to its last row without shipping rows to us."""
    pg = engine.dialect.name == "postgresql"
    prefix = "EXPLAIN (ANALYZE, TIMING OFF) " if pg else "ANALYZE "
    best = float("inf")
    for settings in ((), PG_FLOOR_SETTINGS) if pg else ((),):
        with engine.connect() as conn:
            for s in settings:
                conn.exec_driver_sql(s)
            started = time.perf_counter()
            conn.execute(sa.text(prefix + BARE), {"lo": lo, "hi": hi}).all()
            best = min(best, time.perf_counter() - started)
    return best


def storage(engine: Engine, consume: int) -> dict[str, Any]:
    """Bytes on disk of logs and each summary table, and per million consume logs."""
    names = ["logs", *(s.table.name for s in agg.SUMMARIES)]
    pg = engine.dialect.name == "postgresql"
    out: dict[str, Any] = {}
    if pg:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {', '.join(names)}")
    with engine.connect() as conn:
        for name in names:
            if pg:
                size = conn.execute(
                    sa.text("SELECT pg_total_relation_size(CAST(:n AS regclass))"), {"n": name}
                ).scalar_one()
            else:
                conn.exec_driver_sql(f"ANALYZE TABLE {name}").all()
                size = conn.execute(
                    sa.text(
                        "SELECT data_length + index_length FROM information_schema.tables "
                        "WHERE table_schema = DATABASE() AND table_name = :n"
                    ),
                    {"n": name},
                ).scalar_one()
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()
            out[name] = {
                "rows": int(rows),
                "bytes": int(size),
                "mb_per_million_logs": round(int(size) * 1_000_000 / consume / 2**20, 1),
            }
    summaries = sum(v["bytes"] for k, v in out.items() if k != "logs")
    out["summaries_total"] = {
        "bytes": summaries,
        "mb_per_million_logs": round(summaries * 1_000_000 / consume / 2**20, 1),
    }
    return out


def alternate(rounds: int, one: Callable[[str], None]) -> None:
    """Call one(db) for both databases each round, the first alternating."""
    for i in range(rounds):
        for db in DATABASES if i % 2 == 0 else DATABASES[::-1]:
            one(db)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default="1M")
    p.add_argument("--shape", default="dense", choices=("dense", "sparse"))
    p.add_argument("--tick-rounds", type=int, default=10)
    p.add_argument("--reaggregate-rounds", type=int, default=3)
    p.add_argument("--api-rounds", type=int, default=20)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument(
        "--reaggregate-days",
        type=int,
        default=0,
        help="re-aggregate (and GROUP BY) only the history's first N days; 0: all of it",
    )
    p.add_argument("--out", default=None, help="JSON file (default bench/results/databases_<size>.json)")
    args = p.parse_args(argv)
    rows = parse_rows(args.rows)
    wall = time.perf_counter()

    log(f"building {PG_DB}: {rows:,} logs, {args.shape}")
    urls = {"postgresql": recreate_pg(), "mariadb": recreate_my()}
    engines = {db: make_engine(u) for db, u in urls.items()}
    settings = {db: Settings(database_url=u) for db, u in urls.items()}
    for e in engines.values():
        upgrade(e)
    meta = data.build(engines["postgresql"], rows, args.shape)
    log(f"  built on PostgreSQL in {meta['total_seconds']} s; copying to MariaDB")
    started = time.perf_counter()
    copied = copy_gateway(engines["postgresql"], engines["mariadb"])
    log(f"  copied {copied} in {time.perf_counter() - started:.1f} s")
    with engines["postgresql"].connect() as conn:
        consume = int(conn.execute(sa.select(sa.func.count()).where(m.logs.c.type == m.LOG_CONSUME)).scalar_one())
        heavy = int(
            conn.execute(
                sa.select(m.logs.c.user_id)
                .where(m.logs.c.type == m.LOG_CONSUME)
                .group_by(m.logs.c.user_id)
                .order_by(sa.func.count().desc())
                .limit(1)
            ).scalar_one()
        )

    res: dict[str, Any] = {db: {} for db in DATABASES}

    # 1. The first rollup.
    for db in DATABASES:
        started = time.perf_counter()
        r = rollup.rollup(engines[db], settings[db], wait=True)
        took = time.perf_counter() - started
        res[db]["first_rollup"] = {"seconds": round(took, 2), "logs": r.logs, "batches": r.batches}
        log(f"  first rollup on {db}: {r.logs:,} logs in {took:.1f} s ({r.batches} ticks)")

    totals = {db: summary_totals(engines[db]) for db in DATABASES}
    assert totals["postgresql"] == totals["mariadb"], totals
    log("  exact: every summary table has the same rows, SUM(count) and SUM(quota) on both")

    # 5. Storage, before anything leaves free space behind.
    for db in DATABASES:
        res[db]["storage"] = storage(engines[db], consume)

    # 4. /api/data/self's query, 30 days by the hour, for the heaviest user.
    view = queries.View(granularity="hour")
    api_times: dict[str, list[float]] = {db: [] for db in DATABASES}
    api_rows: dict[str, int] = {}

    def api(db: str) -> None:
        with queries.snapshot(engines[db]) as conn:
            started = time.perf_counter()
            got = queries.user_usage(conn, heavy, view, data.PERIOD_START, data.PERIOD_END - HOUR)
            api_times[db].append(time.perf_counter() - started)
        api_rows.setdefault(db, len(got))
        assert api_rows[db] == len(got)

    alternate(args.api_rounds, api)
    assert api_rows["postgresql"] == api_rows["mariadb"], api_rows
    for db in DATABASES:
        res[db]["api_self_30d_hourly"] = {
            "user": heavy,
            "rows": api_rows[db],
            "median_ms": round(statistics.median(api_times[db]) * 1000, 1),
            "ms": [round(t * 1000, 1) for t in api_times[db]],
        }
        log(f"  /api/data/self on {db}: {api_rows[db]} rows, median {res[db]['api_self_30d_hourly']['median_ms']} ms")

    # 3. Full re-aggregation against the bare GROUP BY.
    bare: dict[str, list[float]] = {db: [] for db in DATABASES}
    reagg: dict[str, list[float]] = {db: [] for db in DATABASES}

    def reaggregate(db: str) -> None:
        bare[db].append(bare_group_by(engines[db], data.PERIOD_START, reaggregate_end))
        r = rollup.reaggregate(engines[db], settings[db], data.PERIOD_START, reaggregate_end)
        reagg[db].append(r.seconds)
        log(f"  re-aggregation on {db}: {r.seconds:.1f} s, bare GROUP BY {bare[db][-1]:.2f} s")

    days = args.reaggregate_days or data.DAYS
    reaggregate_end = data.PERIOD_START + days * data.DAY
    alternate(args.reaggregate_rounds, reaggregate)
    for db in DATABASES:
        b, re_s = statistics.median(bare[db]), statistics.median(reagg[db])
        res[db]["reaggregate"] = {
            "days": days,
            "seconds": [round(x, 2) for x in reagg[db]],
            "bare_seconds": [round(x, 3) for x in bare[db]],
            "median_seconds": round(re_s, 2),
            "bare_median_seconds": round(b, 3),
            "ratio": round(re_s / b, 2),
        }

    # 2. Ticks of `batch` new logs in the data's last hour, on the full history.
    pg = engines["postgresql"]
    with pg.begin() as conn:
        trace_len = int(conn.exec_driver_sql("SELECT count(*) FROM bench_trace").scalar_one())
    first = rows
    ticks: dict[str, list[float]] = {db: [] for db in DATABASES}
    counted: dict[str, list[int]] = {db: [] for db in DATABASES}
    for i in range(args.tick_rounds):
        with pg.begin() as conn:
            top = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar_one()
            data.generate_logs(conn, first, args.batch, data.PERIOD_END - HOUR, HOUR, trace_len, args.shape)
        copy_rows(pg, engines["mariadb"], m.logs, m.logs.c.id > top)
        first += args.batch
        for db in DATABASES if i % 2 == 0 else DATABASES[::-1]:
            started = time.perf_counter()
            r = rollup.tick(engines[db], settings[db], wait=True)
            ticks[db].append(time.perf_counter() - started)
            counted[db].append(r.logs)
        log(
            f"  tick round {i + 1}: PostgreSQL {ticks['postgresql'][-1] * 1000:.0f} ms, "
            f"MariaDB {ticks['mariadb'][-1] * 1000:.0f} ms ({counted['postgresql'][-1]:,} consume logs)"
        )
    assert counted["postgresql"] == counted["mariadb"], counted
    for db in DATABASES:
        res[db]["tick"] = {
            "logs_added": args.batch,
            "consume_logs_per_tick": counted[db][0],
            "ms": [round(t * 1000, 1) for t in ticks[db]],
            "median_ms": round(statistics.median(ticks[db]) * 1000, 1),
        }

    end_totals = {db: summary_totals(engines[db]) for db in DATABASES}
    assert end_totals["postgresql"] == end_totals["mariadb"], end_totals
    log("  exact at the end too")

    versions = {}
    with pg.connect() as conn:
        versions["postgresql"] = conn.exec_driver_sql("SHOW server_version").scalar_one()
    with engines["mariadb"].connect() as conn:
        versions["mariadb"] = conn.exec_driver_sql("SELECT VERSION()").scalar_one()
    wall_seconds = time.perf_counter() - wall
    out = {
        "command": f"python -m bench.databases --rows {args.rows} --shape {args.shape}",
        "rows": rows,
        "shape": args.shape,
        "consume_logs": consume,
        "generated_on": "postgresql (bench/data.py), copied row for row to mariadb",
        "copied": copied,
        "build": {k: meta[k] for k in ("load_seconds", "total_seconds")},
        "versions": versions,
        "summary_totals_after_first_rollup": totals["postgresql"],
        "exact": True,
        "results": res,
        "wall_seconds": round(wall_seconds, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    path = Path(args.out) if args.out else RESULTS / f"databases_{data.size_label(rows)}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(table(out))
    log(f"wrote {path}; wall {wall_seconds:.0f} s")
    for e in engines.values():
        e.dispose()
    return 0


def table(out: dict[str, Any]) -> str:
    pg, my = out["results"]["postgresql"], out["results"]["mariadb"]

    def row(name: str, a: Any, b: Any) -> str:
        ratio = f"{b / a:.2f}" if isinstance(a, int | float) and a else ""
        return f"| {name} | {a} | {b} | {ratio} |"

    lines = [
        f"{out['rows']:,} logs ({out['shape']}), {out['consume_logs']:,} consume logs",
        "",
        "| | PostgreSQL | MariaDB | MariaDB / PostgreSQL |",
        "|---|---:|---:|---:|",
        row("first rollup, s", pg["first_rollup"]["seconds"], my["first_rollup"]["seconds"]),
        row(
            f"tick of {pg['tick']['logs_added']:,} logs on the history, median ms",
            pg["tick"]["median_ms"],
            my["tick"]["median_ms"],
        ),
        row(
            f"re-aggregation of {pg['reaggregate']['days']} days, median s",
            pg["reaggregate"]["median_seconds"],
            my["reaggregate"]["median_seconds"],
        ),
        row(
            "bare GROUP BY (hour, user, model) of those days, median s",
            pg["reaggregate"]["bare_median_seconds"],
            my["reaggregate"]["bare_median_seconds"],
        ),
        row("re-aggregation / bare GROUP BY", pg["reaggregate"]["ratio"], my["reaggregate"]["ratio"]),
        row(
            f"/api/data/self, 30 days hourly, user {pg['api_self_30d_hourly']['user']}, median ms",
            pg["api_self_30d_hourly"]["median_ms"],
            my["api_self_30d_hourly"]["median_ms"],
        ),
        row("  rows returned", pg["api_self_30d_hourly"]["rows"], my["api_self_30d_hourly"]["rows"]),
        row(
            "summary tables, MB per million logs",
            pg["storage"]["summaries_total"]["mb_per_million_logs"],
            my["storage"]["summaries_total"]["mb_per_million_logs"],
        ),
        row(
            "logs, MB per million logs",
            pg["storage"]["logs"]["mb_per_million_logs"],
            my["storage"]["logs"]["mb_per_million_logs"],
        ),
    ]
    for s in agg.SUMMARIES:
        n = s.table.name
        lines.append(
            row(
                f"  {n}, MB per million",
                pg["storage"][n]["mb_per_million_logs"],
                my["storage"][n]["mb_per_million_logs"],
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
