"""Issue 12's tick constraint against other designs of the detail tables (bench only).

    python -m bench.tick_designs --rows 1M                   # dense
    python -m bench.tick_designs --shape sparse --rows 2M

On a data set built by bench/run.py, times a tick of 10,000 logs on the full history with
each design's summary tables, the designs in turn, the order rotating each round (as
figure 6 does for six tables against four), and writes bench/results/<shape>_<size>_designs.json.
The designs other than the product's are tables created for the run, filled from the
product's detail tables, and dropped afterwards; the product's tables are put back as
they were (the added logs deleted, their hour re-aggregated into all six).

- four: the four original tables (today's);
- six: the product (four + hourly_detail_usage + daily_detail_usage);
- six_copy: four + fresh copies of the two detail tables, the same definition (a control:
  freshly packed tables against tables that ticks have grown);
- six_lean: four + detail tables keyed by the ids only (user, bucket, model, key id,
  channel, group; the user's and the key's names as attributes folded by MAX), without
  the bucket index, and with fillfactor 70 so that a tick's updates can stay on their
  heap page (HOT) and add no index entry;
- six_time_first: four + detail tables keyed by the bucket first (the product's key with
  created_at moved to the front), with an index on (user_id, created_at) in place of
  the one on created_at: a tick's rows, all in one hour and one day, then lie in a few
  adjacent leaves of the key instead of one place per user;
- five: four + hourly_detail_usage only (answers by day at the detail grain would be
  summed from hourly rows);
- five_lean: four + the lean hourly detail table only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import sqlalchemy as sa

from shared import aggregation as agg
from shared import models as m
from shared import rollup
from shared.config import Settings
from shared.db import make_engine

from . import data, shapes, variants
from .run import HOUR, RESULTS, StatementTimer, database_url, log, parse_rows, vacuum_summaries

SCRATCH = sa.MetaData()
LEAN_KEY = ("user_id", agg.BUCKET, "model_name", "token_id", "channel_id", "use_group")


def scratch_table(
    name: str, key: tuple[str, ...], *, fillfactor: int | None, time_index: bool, user_index: bool = False
) -> sa.Table:
    """A summary table like shared.aggregation's, outside the product's metadata."""
    attributes = agg.attributes_of(k for k in key if k != agg.BUCKET)
    options: dict[str, Any] = {"postgresql_with": {"fillfactor": fillfactor}} if fillfactor else {}
    return sa.Table(
        name,
        SCRATCH,
        *(sa.Column(k, sa.BigInteger if k == agg.BUCKET else agg.FIELDS[k].type, nullable=False) for k in key),
        *(sa.Column(a, agg.FIELDS[a].type, nullable=False, server_default="") for a in attributes),
        *(sa.Column(f.name, f.type, nullable=False, server_default="0") for f in agg.MEASURES),
        sa.PrimaryKeyConstraint(*key, name=f"{name}_pkey"),
        *([sa.Index(f"ix_{name}_created_at", agg.BUCKET)] if time_index else []),
        *([sa.Index(f"ix_{name}_user_id_created_at", "user_id", agg.BUCKET)] if user_index else []),
        **options,
    )


def scratch_summaries() -> dict[str, tuple[agg.Summary, agg.Summary]]:
    """(hourly, daily) scratch summaries of each scratch design, with the product table each is filled from."""
    copy = {
        grain: scratch_table(f"bench_copy_{grain}_detail", agg.DETAIL_KEY, fillfactor=None, time_index=True)
        for grain in ("hour", "day")
    }
    lean = {
        grain: scratch_table(f"bench_lean_{grain}_detail", LEAN_KEY, fillfactor=70, time_index=False)
        for grain in ("hour", "day")
    }
    time_first_key = (agg.BUCKET, *(k for k in agg.DETAIL_KEY if k != agg.BUCKET))
    time_first = {
        grain: scratch_table(
            f"bench_time_first_{grain}_detail", time_first_key, fillfactor=None, time_index=False, user_index=True
        )
        for grain in ("hour", "day")
    }
    return {
        "copy": (agg.Summary(copy["hour"], "hour"), agg.Summary(copy["day"], "day")),
        "time_first": (agg.Summary(time_first["hour"], "hour"), agg.Summary(time_first["day"], "day")),
        "lean": (agg.Summary(lean["hour"], "hour"), agg.Summary(lean["day"], "day")),
    }


def fill(conn: sa.Connection, target: agg.Summary, source: sa.Table) -> None:
    """target := source's rows folded by target's key."""
    s = source
    rows = agg.aggregate(s, list(target.key), target.values)
    conn.execute(sa.insert(target.table).from_select([*target.key, *target.values], rows))


def designs(scratch: dict[str, tuple[agg.Summary, agg.Summary]]) -> dict[str, tuple[agg.Summary, ...]]:
    four = variants.VARIANTS["four"]
    hourly_detail = agg.summary("hour", agg.DIMENSION_NAMES)
    copy_h, copy_d = scratch["copy"]
    lean_h, lean_d = scratch["lean"]
    # The finest table of each grain first, as in shared.aggregation.SUMMARIES.
    hourly4 = tuple(s for s in four if s.grain == "hour")
    daily4 = tuple(s for s in four if s.grain == "day")
    return {
        "four": four,
        "six": variants.VARIANTS["six"],
        "six_copy": (copy_h, *hourly4, copy_d, *daily4),
        "six_lean": (lean_h, *hourly4, lean_d, *daily4),
        "six_time_first": (*scratch["time_first"][:1], *hourly4, *scratch["time_first"][1:], *daily4),
        "five": (hourly_detail, *hourly4, *daily4),
        "five_lean": (lean_h, *hourly4, *daily4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tick_designs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_rows, default=parse_rows("1M"))
    parser.add_argument("--shape", choices=sorted(shapes.SHAPES), default=shapes.DEFAULT_SHAPE)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args(argv)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    url = database_url(data.database_name(args.shape, args.rows))
    engine = make_engine(url)
    scratch = scratch_summaries()
    product = {"hour": agg.summary("hour", agg.DIMENSION_NAMES), "day": agg.summary("day", agg.DIMENSION_NAMES)}
    log("creating and filling the scratch tables")
    with engine.begin() as conn:
        SCRATCH.drop_all(conn)
        SCRATCH.create_all(conn)
        for pair in scratch.values():
            for s in pair:
                fill(conn, s, product[s.grain].table)
        trace_len = data.load_traces(conn)
        top = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar_one()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE " + ", ".join(t.name for t in SCRATCH.sorted_tables))
    by_design = designs(scratch)
    times: dict[str, list[float]] = {d: [] for d in by_design}
    spent: dict[str, list[dict[str, float]]] = {d: [] for d in by_design}
    timer = StatementTimer(engine)
    first = args.rows
    names = list(by_design)
    try:
        for i in range(args.rounds):
            k = i % len(names)
            for design in names[k:] + names[:k]:
                with engine.begin() as conn:
                    data.generate_logs(conn, first, args.batch, data.PERIOD_END - HOUR, HOUR, trace_len, args.shape)
                first += args.batch
                agg.SUMMARIES = by_design[design]
                try:
                    with timer.recording() as by_statement:
                        started = time.perf_counter()
                        rollup.tick(engine, Settings(database_url=url), wait=True)
                        took = time.perf_counter() - started
                finally:
                    variants.use("six")
                times[design].append(took)
                by_statement["commit and python"] = took - sum(by_statement.values())
                spent[design].append(by_statement)
            log(f"  round {i + 1}: " + ", ".join(f"{d} {times[d][-1] * 1000:.1f} ms" for d in names))
    finally:
        with engine.begin() as conn:
            conn.execute(sa.delete(m.logs).where(m.logs.c.id > top))
            conn.exec_driver_sql("DROP TABLE IF EXISTS bench_trace")
            SCRATCH.drop_all(conn)
        rollup.reaggregate(engine, Settings(database_url=url), data.PERIOD_END - HOUR, data.PERIOD_END)
        vacuum_summaries(engine)
        engine.dispose()
    med = {d: statistics.median(v) for d, v in times.items()}

    def statements(design: str) -> dict[str, float]:
        kinds = sorted({k for one in spent[design] for k in one})
        return {k: round(statistics.median(one.get(k, 0.0) for one in spent[design]) * 1000, 2) for k in kinds}

    out: dict[str, Any] = {
        "shape": args.shape,
        "rows": args.rows,
        "rounds": args.rounds,
        "batch": args.batch,
        "started": started_at,
        "median_ms": {d: round(v * 1000, 1) for d, v in med.items()},
        "ratio_to_four": {d: round(v / med["four"], 2) for d, v in med.items()},
        "paired_ratio_to_four": {
            d: round(statistics.median(a / b for a, b in zip(times[d], times["four"], strict=True)), 2)
            for d in by_design
        },
        "tick_seconds": times,
        "statement_ms": {d: statements(d) for d in by_design},
    }
    path = RESULTS / f"{args.shape}_{data.size_label(args.rows)}_designs.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    log(f"results in {path}")
    print(json.dumps({k: out[k] for k in ("median_ms", "ratio_to_four", "paired_ratio_to_four")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
