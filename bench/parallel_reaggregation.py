"""A re-aggregation shared by several Celery worker processes (issue 14, target 3).

    python -m bench.parallel_reaggregation --shape dense --rows 1M --rounds 3

On a copy of bench.run's data set (PostgreSQL; built by `python -m bench.run --shape dense
--rows 1M --figures none` if missing), each round, in an order that alternates:
- the bare GROUP BY of the same logs by (hour, user, model) (bench.run.bare_group_by:
  EXPLAIN ANALYZE runs it to the end without shipping rows), and at the detail grain;
- the whole history handed to a real worker (prefork, as POST /api/data/reaggregate
  does) with REAGGREGATE_WORKERS=1 and one pool process, then with REAGGREGATE_WORKERS=N
  and N pool processes (the job and N - 1 helpers), timed by the job's task itself.
History unchanged (every chunk compares and writes nothing), then, with --damaged, after
every quota of the finest table was moved by one (every row is rewritten). The copy's
rows are checked equal to a GROUP BY of the logs at the end. Medians and ratios go to
bench/results/parallel_reaggregation_<shape>_<size>.json.
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
from shared.config import Settings
from shared.db import make_engine
from shared.jobs import celery_app
from shared.migrate import upgrade
from shared.rollup import history_bounds, rollup

from . import data
from .run import (
    BARE,
    BARE_DETAIL,
    REDIS,
    RESULTS,
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


def damage(engine: Any) -> None:
    finest = agg.SUMMARIES[0].table
    with engine.begin() as conn:
        conn.execute(sa.update(finest).values(quota=finest.c.quota + 1))
    vacuum_summaries(engine)


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
        times["bare"].append(bare_group_by(engine, BARE))
        load["bare"].append(os.getloadavg()[0])
        times["bare_detail"].append(bare_group_by(engine, BARE_DETAIL))
        load["bare_detail"].append(os.getloadavg()[0])
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="dense", choices=["dense", "sparse"])
    p.add_argument("--rows", default="1M")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--damaged", action="store_true", help="also re-aggregate after damaging every row")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = parse_rows(args.rows)
    source = data.database_name(args.shape, rows)
    url = copy_of(source, f"{source}_parallel")
    results: dict[str, Any] = {"shape": args.shape, "rows": rows, "workers": args.workers, "at": time.time()}
    with tempfile.TemporaryDirectory() as tmp:
        results["unchanged"] = measure(url, Path(tmp), args.rounds, args.workers, "unchanged")
        if args.damaged:
            results["damaged"] = measure(url, Path(tmp), args.rounds, args.workers, "damaged")
    out = args.out or RESULTS / f"parallel_reaggregation_{args.shape}_{data.size_label(rows)}.json"
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
