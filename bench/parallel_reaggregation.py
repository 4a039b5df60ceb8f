"""A re-aggregation shared by several Celery worker processes (issue 14, target 3).

    python -m bench.parallel_reaggregation --shape dense --rows 1M --rounds 3
    python -m bench.parallel_reaggregation --database mariadb --shape dense --rows 1M --rounds 3

On a copy of bench.run's data set (built by `python -m bench.run --shape dense --rows 1M
--figures none` if missing): on PostgreSQL a CREATE DATABASE ... TEMPLATE of it; on
MariaDB its gateway rows copied into reagg_<shape>_<size> (bench.http_cache.copy_to_mariadb,
about 130 s at 1M), migrated and rolled up. Each round, in an order that alternates:
- the bare GROUP BY of the same logs by (hour, user, model), run to the end without
  shipping rows (PostgreSQL: bench.run.bare_group_by, EXPLAIN ANALYZE; MariaDB:
  bench.databases.bare_group_by, ANALYZE), and at the detail grain;
- the whole history handed to a real worker (prefork, as POST /api/data/reaggregate
  does) with REAGGREGATE_WORKERS=1 and one pool process, then with REAGGREGATE_WORKERS=N
  and N pool processes (the job and N - 1 helpers), timed by the job's task itself.
History unchanged (every chunk compares and writes nothing), then, with --damaged, after
every quota of the finest table was moved by one (every row is rewritten). The copy's
rows are checked equal to a GROUP BY of the logs at the end. Medians and ratios go to
bench/results/parallel_reaggregation_<shape>_<size>.json (PostgreSQL) or
parallel_reaggregation_mariadb_<shape>_<size>.json. With --profile, the whole history is
then re-aggregated once more in this process (one worker's sequence of chunks), every
statement timed by what it does: where a chunk's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shared import aggregation as agg
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.jobs import celery_app
from shared.migrate import upgrade
from shared.rollup import history_bounds, reaggregate, rollup

from . import data, databases
from .http_cache import copy_to_mariadb
from .run import (
    BARE,
    BARE_DETAIL,
    REDIS,
    RESULTS,
    StatementTimer,
    admin_engine,
    bare_group_by,
    celery_worker,
    database_url,
    log,
    parse_rows,
    reaggregate_in_worker,
    vacuum_summaries,
)


def copy_of(source: str, name: str) -> str:
    """`name`, a copy of the database `source` (CREATE DATABASE ... TEMPLATE), migrated
    and caught up; reused when it exists."""
    with admin_engine().connect() as conn:
        have = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
        if not have:
            if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": source}).first():
                sys.exit(f"no database {source}: build it with `python -m bench.run --figures none` (same shape/rows)")
            log(f"copying {source} into {name}")
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
    url = database_url(name)
    engine = make_engine(url)
    upgrade(engine)
    rollup(engine, Settings(database_url=url))
    vacuum_summaries(engine)
    return url


def mariadb_copy_of(source: str, name: str) -> str:
    """`name` on MariaDB, the gateway rows of the PostgreSQL database `source` copied
    into it, migrated and caught up; reused when it holds as many logs as `source`."""
    url = make_engine(databases.MY_ADMIN).url.set(database=name).render_as_string(hide_password=False)
    with make_engine(database_url(source)).connect() as conn:
        want = conn.execute(sa.select(sa.func.count()).select_from(m.logs)).scalar_one()
    with make_engine(databases.MY_ADMIN).connect() as conn:
        have = conn.execute(
            sa.text("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = :n"), {"n": name}
        ).first()
    if have:
        with make_engine(url).connect() as conn:
            have = conn.execute(sa.select(sa.func.count()).select_from(m.logs)).scalar_one() == want
    if not have:
        log(f"copying {source} into MariaDB's {name}")
        copy_to_mariadb(database_url(source), url)
    engine = make_engine(url)
    upgrade(engine)
    rollup(engine, Settings(database_url=url))
    analyze_summaries(engine)
    return url


def analyze_summaries(engine: Any) -> None:
    if engine.dialect.name == "postgresql":
        vacuum_summaries(engine)
        return
    names = ", ".join(s.table.name for s in agg.SUMMARIES)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"ANALYZE TABLE {names}").all()


# MariaDB's bare GROUP BY at the detail grain (every dimension of shared.aggregation),
# as bench.databases.bare_group_by runs its (hour, user, model) one: ANALYZE runs it to
# the end without shipping rows.
MARIADB_BARE_DETAIL = """
ANALYZE SELECT created_at - created_at % 3600 AS hour, user_id, username, model_name, token_id, token_name,
       channel_id, `group`, count(*), sum(quota),
       sum(prompt_tokens + completion_tokens), sum(prompt_tokens), sum(completion_tokens)
FROM logs WHERE type = 2 AND created_at >= :lo AND created_at < :hi GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""


def floors(engine: Any, start: int, end: int) -> tuple[float, float]:
    """The bare GROUP BY's seconds by (hour, user, model), and at the detail grain."""
    if engine.dialect.name == "postgresql":
        return bare_group_by(engine, BARE), bare_group_by(engine, BARE_DETAIL)
    with engine.connect() as conn:
        started = time.perf_counter()
        conn.execute(sa.text(MARIADB_BARE_DETAIL), {"lo": start, "hi": end}).all()
        detail = time.perf_counter() - started
    return databases.bare_group_by(engine, start, end), detail


def damage(engine: Any) -> None:
    finest = agg.SUMMARIES[0].table
    with engine.begin() as conn:
        conn.execute(sa.update(finest).values(quota=finest.c.quota + 1))
    analyze_summaries(engine)


def exact(engine: Any) -> bool:
    """hourly_usage equals a GROUP BY of the consume logs (counts and quotas)."""
    q = sa.text(
        """
        SELECT count(*) FROM (
          (SELECT created_at - created_at % 3600 AS h, user_id, model_name, count(*) AS n, sum(quota) AS q
             FROM logs WHERE type = 2 GROUP BY 1, 2, 3
           EXCEPT SELECT created_at, user_id, model_name, count, quota FROM hourly_usage)
          UNION ALL
          (SELECT created_at, user_id, model_name, count, quota FROM hourly_usage
           EXCEPT SELECT created_at - created_at % 3600, user_id, model_name, count(*), sum(quota)
             FROM logs WHERE type = 2 GROUP BY 1, 2, 3)) AS d
        """
    )
    with engine.connect() as conn:
        return conn.execute(q).scalar_one() == 0


def run_job(url: str, workdir: Path, workers: int, start: int, end: int) -> float:
    app = celery_app(Settings(database_url=url, celery_broker_url=REDIS, celery_result_backend=REDIS))
    with celery_worker(url, workdir, concurrency=workers, REAGGREGATE_WORKERS=workers) as proc:
        out = reaggregate_in_worker(app, url, proc.pid, start, end)
    return float(out["seconds"])


def measure(url: str, workdir: Path, rounds: int, workers: int, label: str) -> dict[str, Any]:
    engine = make_engine(url)
    bounds = history_bounds(engine)
    assert bounds is not None
    start, end = bounds
    times: dict[str, list[float]] = {"bare": [], "bare_detail": [], "one": [], "shared": []}
    # The machine is shared: the 1-minute load average after each measurement, to read
    # the figures by.
    load: dict[str, list[float]] = {k: [] for k in times}
    for r in range(rounds):
        order = ["one", "shared"] if r % 2 == 0 else ["shared", "one"]
        bare, bare_detail = floors(engine, start, end)
        times["bare"].append(bare)
        times["bare_detail"].append(bare_detail)
        load["bare"].append(os.getloadavg()[0])
        load["bare_detail"].append(load["bare"][-1])
        for variant in order:
            if label == "damaged":
                damage(engine)
            took = run_job(url, workdir, 1 if variant == "one" else workers, start, end)
            times[variant].append(took)
            load[variant].append(os.getloadavg()[0])
            log(
                f"{label} round {r + 1}: {variant} {took:.2f} s (bare {times['bare'][-1]:.2f} s; load {load[variant][-1]:.1f})"
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "seconds": times,
        "load_average_1m": load,
        "median": med,
        "one_over_bare": med["one"] / med["bare"],
        "shared_over_bare": med["shared"] / med["bare"],
        "shared_over_one": med["shared"] / med["one"],
        # The product aggregates at the detail grain (every dimension): the floor of that.
        "shared_over_bare_detail": med["shared"] / med["bare_detail"],
        "shared_over_bare_by_round": [s / b for s, b in zip(times["shared"], times["bare"], strict=True)],
        "exact": exact(engine),
    }


class ChunkStatements(StatementTimer):
    """bench.run.StatementTimer, the rollup's lock and the reads told apart from the rest."""

    @classmethod
    def kind(cls, statement: str) -> str:
        found = super().kind(statement)
        if found != "other":
            return found
        text = statement.lstrip().upper()
        if "GET_LOCK" in text or "RELEASE_LOCK" in text:
            return "rollup lock (GET_LOCK, RELEASE_LOCK)"
        if text.startswith("SELECT"):
            return "select"
        return "other (DDL, SET)"


def profile(url: str) -> dict[str, Any]:
    """The whole history re-aggregated once in this process (one worker's chunks, in a
    row), the seconds of its statements by what each does."""
    engine = make_engine(url)
    bounds = history_bounds(engine)
    assert bounds is not None
    timer = ChunkStatements(engine)
    with timer.recording() as spent:
        result = reaggregate(engine, Settings(database_url=url), *bounds)
    total = sum(spent.values())
    by_kind = dict(sorted(spent.items(), key=lambda kv: -kv[1]))
    out = {
        "seconds": result.seconds,
        "chunks": result.chunks,
        "statement_seconds": {k: round(v, 3) for k, v in by_kind.items()},
        "statement_share": {k: round(v / result.seconds, 3) for k, v in by_kind.items()},
        "outside_statements_share": round(1 - total / result.seconds, 3),
    }
    log(f"profile: {result.chunks} chunks in {result.seconds:.2f} s, one process")
    for k, v in by_kind.items():
        log(f"  {k}: {v:.2f} s ({v / result.seconds:.0%})")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database", default="postgresql", choices=["postgresql", "mariadb"])
    p.add_argument("--shape", default="dense", choices=["dense", "sparse"])
    p.add_argument("--rows", default="1M")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--damaged", action="store_true", help="also re-aggregate after damaging every row")
    p.add_argument("--profile", action="store_true", help="then time a chunk's statements (in this process)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = parse_rows(args.rows)
    source = data.database_name(args.shape, rows)
    size = data.size_label(rows)
    if args.database == "mariadb":
        url = mariadb_copy_of(source, f"reagg_{args.shape}_{size}")
        name = f"parallel_reaggregation_mariadb_{args.shape}_{size}.json"
    else:
        url = copy_of(source, f"{source}_parallel")
        name = f"parallel_reaggregation_{args.shape}_{size}.json"
    results: dict[str, Any] = {
        "database": args.database,
        "command": " ".join(["python -m bench.parallel_reaggregation", *(argv if argv is not None else sys.argv[1:])]),
        "shape": args.shape,
        "rows": rows,
        "workers": args.workers,
        "at": time.time(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["unchanged"] = measure(url, Path(tmp), args.rounds, args.workers, "unchanged")
        if args.damaged:
            results["damaged"] = measure(url, Path(tmp), args.rounds, args.workers, "damaged")
    if args.profile:
        results["profile"] = profile(url)
    out = args.out or RESULTS / name
    out.write_text(json.dumps(results, indent=2) + "\n")
    for label in ("unchanged", "damaged"):
        if label in results:
            r = results[label]
            log(
                f"{label}: one worker {r['one_over_bare']:.2f}x the bare GROUP BY, {args.workers} workers "
                f"{r['shared_over_bare']:.2f}x ({r['shared_over_one']:.2f}x one worker's time); exact: {r['exact']}"
            )
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
