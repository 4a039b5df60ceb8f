"""Issue 12's tick constraint against other designs of the detail tables (bench only).

    python -m bench.tick_designs --rows 1M                   # dense
    python -m bench.tick_designs --shape sparse --rows 2M

On a data set built by bench/run.py, times a tick of 10,000 logs on the full history with
each design's summary tables, the designs in turn, the order rotating each round (as
figure 6 does for five tables against four), and writes bench/results/<shape>_<size>_designs.json.
The designs other than the product's use tables created for the run, filled from
hourly_detail_usage, and dropped afterwards; the product's tables are put back as they
were (the added logs deleted, their hour re-aggregated into all five).

- four: the four original tables (today's);
- five: the product (four + hourly_detail_usage, its hours cut at local midnights);
- six: the design measured and dropped before (five + a daily detail table, here a
  scratch one: bench/variants.py);
- five_lean: four + an hourly detail table keyed by the ids only (user, bucket, model,
  key id, channel, group; the user's and the key's names as attributes folded by MAX),
  without the bucket index, with fillfactor 70 so that a tick's updates can stay on
  their heap page (HOT) and add no index entry: whether a narrower detail table buys
  margin under the 1.5x.

The scratch tables are freshly packed, the product's have grown under ticks and
VACUUM; before migration 0004 a freshly packed copy of the detail tables ticked no
faster than the tables themselves (slower, if anything).
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

LEAN_KEY = ("user_id", agg.BUCKET, "model_name", "token_id", "channel_id", "use_group")
LEAN_HOURLY = agg.Summary(
    variants.scratch_table("bench_lean_hour_detail", LEAN_KEY, fillfactor=70, time_index=False),
    "hour",
    cut_at_midnight=True,
)


def fill(conn: sa.Connection, target: agg.Summary, source: sa.Table) -> None:
    """target := source's rows (of the same grain) folded by target's key."""
    rows = agg.aggregate(source, list(target.key), target.values)
    conn.execute(sa.insert(target.table).from_select([*target.key, *target.values], rows))


def designs() -> dict[str, tuple[agg.Summary, ...]]:
    four = variants.VARIANTS["four"]
    # The finest table of each grain first, as in shared.aggregation.SUMMARIES.
    return {
        "four": four,
        "five": variants.VARIANTS["five"],
        "six": variants.VARIANTS["six"],
        "five_lean": (
            LEAN_HOURLY,
            *(s for s in four if s.grain == "hour"),
            *(s for s in four if s.grain == "day"),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tick_designs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_rows, default=parse_rows("1M"))
    parser.add_argument("--shape", choices=sorted(shapes.SHAPES), default=shapes.DEFAULT_SHAPE)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args(argv)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    url = database_url(data.database_name(args.shape, args.rows))
    engine = make_engine(url)
    scratch = (variants.DAILY_DETAIL.table, LEAN_HOURLY.table)
    log("creating and filling the scratch tables")
    with engine.begin() as conn:
        for t in scratch:
            t.drop(conn, checkfirst=True)
            t.create(conn)
        variants.fill_days(conn, variants.DAILY_DETAIL, agg.hourly_detail_usage)
        fill(conn, LEAN_HOURLY, agg.hourly_detail_usage)
        trace_len = data.load_traces(conn)
        top = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar_one()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE " + ", ".join(t.name for t in scratch))
    by_design = designs()
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
                with variants.summaries(by_design[design]), timer.recording() as by_statement:
                    started = time.perf_counter()
                    rollup.tick(engine, Settings(database_url=url), wait=True)
                    took = time.perf_counter() - started
                times[design].append(took)
                by_statement["commit and python"] = took - sum(by_statement.values())
                spent[design].append(by_statement)
            log(f"  round {i + 1}: " + ", ".join(f"{d} {times[d][-1] * 1000:.1f} ms" for d in names))
    finally:
        with engine.begin() as conn:
            conn.execute(sa.delete(m.logs).where(m.logs.c.id > top))
            conn.exec_driver_sql("DROP TABLE IF EXISTS bench_trace")
            for t in scratch:
                t.drop(conn, checkfirst=True)
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
