"""The figures of bench/results/<name>.json as the Markdown tables of BENCHMARKS.md.

python -m bench.report dense_1m sparse_2m   # or no names: every results file
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# The summary tables before issue 12 (bench/variants.py, without importing the product).
ORIGINAL_TABLES = ("hourly_usage", "hourly_model_usage", "daily_usage", "daily_model_usage")


def _ok(good: bool) -> str:
    return "met" if good else "**not met**"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def storage_table(storage: dict[str, Any]) -> list[str]:
    """The storage of `logs` and each summary table (bench.data.storage) as Markdown."""
    out = [
        f"Storage after the build and its first rollup ({storage['consume_logs']:,} consume logs; "
        "sizes from `pg_total_relation_size`, per million consume logs):",
        "",
        "| table | rows | rows per 1M logs | heap | indexes | total | **per 1M logs** |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in storage["tables"].items():
        out.append(
            f"| `{name}` | {t['rows']:,} | {t['rows_per_million_logs']:,} | {_mib(t['table_bytes'])} | "
            f"{_mib(t['index_bytes'])} | {_mib(t['total_bytes'])} | **{_mib(t['bytes_per_million_logs'])}** |"
        )
    groups = {
        "the four original summary tables": [n for n in storage["tables"] if n in ORIGINAL_TABLES],
        "the detail table (issue 12)": [n for n in storage["tables"] if n.endswith("_detail_usage")],
        "all summary tables": [n for n in storage["tables"] if n != "logs"],
    }
    for label, names in groups.items():
        tables = [storage["tables"][n] for n in names]
        total = {k: sum(t[k] for t in tables) for k in ("table_bytes", "index_bytes", "total_bytes")}
        rows = sum(t["rows_per_million_logs"] for t in tables)
        per_million = sum(t["bytes_per_million_logs"] for t in tables)
        out.append(
            f"| {label} | | {rows:,} | {_mib(total['table_bytes'])} | {_mib(total['index_bytes'])} | "
            f"{_mib(total['total_bytes'])} | **{_mib(per_million)}** |"
        )
    return out


def distribution_line(d: dict[str, Any]) -> str:
    """The data shape's facts (bench.shapes.describe) in one sentence."""
    b = d["logs_per_bucket"]["user_model_hour"]
    fine = d["logs_per_bucket"]["user_model_token_channel_group_hour"]
    n = d["distinct"]
    return (
        f"Logs per non-empty (user, model, hour) bucket: median {b['median']}, mean {b['mean']}, "
        f"p99 {b['p99']}, max {b['max']} ({b['buckets']:,} buckets, {b['share_single']:.0%} of them a single log); "
        f"with key, channel and group as well: mean {fine['mean']} ({fine['buckets']:,} buckets). "
        f"{n['user_model_pairs']:,} (user, model) pairs, {n['tokens']:,} keys, {n['channels']} channels, "
        f"{n['groups']} groups."
    )


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:,.1f}"


def tick_breakdown(t: dict[str, Any]) -> list[str]:
    """Figure 6's per-statement medians (ms) for each case, and the EXPLAIN ANALYZE of the
    five-table tick's inserts."""
    cases = list(t["statement_ms"])
    kinds = sorted({k for c in cases for k in t["statement_ms"][c]}, key=lambda k: (k == "other", k))
    out = [
        "Where a tick's time goes (median ms per statement, by what it writes; *commit and python*: the "
        "call's wall time less its statements):",
        "",
        "| statement | " + " | ".join(c.replace("_", ", ") + " tables" for c in cases) + " |",
        "|---|" + "---|" * len(cases),
    ]
    for k in kinds:
        out.append(f"| {k} | " + " | ".join(_ms(t["statement_ms"][c].get(k)) for c in cases) + " |")
    out.append("| **the tick (median wall time)** | " + " | ".join(f"**{t['median_ms'][c]}**" for c in cases) + " |")
    ex = t.get("explain_five_tables")
    if ex:
        out += [
            "",
            "EXPLAIN (ANALYZE, BUFFERS, WAL) of each insert of a five-table tick on the full history "
            "(medians of the explained ticks):",
            "",
            "| insert into | ms | rows in | inserted | updated (conflicting) | buffers hit | read | dirtied "
            "| WAL records | WAL full pages | WAL bytes |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind, f in ex.items():
            if f["inserted"] is None:
                continue
            out.append(
                f"| `{kind.split()[-1]}` | {f['ms']:.1f} | {f['rows_in']:,.0f} | {f['inserted']:,.0f} | "
                f"{f['conflicting']:,.0f} | {f['shared_hit']:,.0f} | {f['shared_read']:,.0f} | {f['dirtied']:,.0f} | "
                f"{f['wal_records']:,.0f} | {f['wal_fpi']:,.0f} | {f['wal_bytes'] / 2**20:.2f} MiB |"
            )
    return out


# bench.run's REAGGREGATIONS, as the column headings of figure 9 and constraint 2.
REAGGREGATION_NAMES = {
    "five": "five tables, default (the finest compared)",
    "four": "four tables, every one compared (today's)",
    "five_check": "five tables, `check_every_table`",
}


def reaggregation_breakdown(spent: dict[str, dict[str, float]]) -> list[str]:
    """Figure 9: a full re-aggregation's seconds by statement, for each re-aggregation
    measured (results before the three of bench.run's REAGGREGATIONS: five and four)."""

    def group(kind: str) -> str:
        if kind.startswith("create rollup_change from "):
            return f"compare the fresh rows with `{kind.rsplit(' ', 1)[-1]}` (FULL JOIN into rollup_change)"
        if kind == "create rollup_fresh":
            return "aggregate the logs (rollup_fresh, at the detail grain)"
        if kind == "create rollup_touched":
            return "the keys the finest table's change touched (rollup_touched)"
        if kind.startswith(("insert ", "delete ")):
            return "write the rows that differ (deletes and upserts, every table)"
        return {"the re-aggregation": "**the re-aggregation (wall time)**"}.get(kind, kind)

    rows: dict[str, dict[str, float]] = {}
    for variant, kinds in spent.items():
        for kind, seconds in kinds.items():
            g = rows.setdefault(group(kind), {})
            g[variant] = g.get(variant, 0.0) + seconds
    order = sorted(rows, key=lambda k: (k.startswith("**"), k in ("commit and python", "other"), k))
    variants = list(spent)
    names = [REAGGREGATION_NAMES[v] for v in variants] if "five_check" in spent else [f"{v} tables" for v in variants]
    out = [
        "Where a full re-aggregation's time goes, history unchanged (seconds, medians of `--repeats` runs each, "
        "alternating, in the benchmark's process, figure 9):",
        "",
        "| step | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(variants),
    ]
    out += [f"| {k} | " + " | ".join(f"{rows[k].get(v, 0):.2f}" for v in variants) + " |" for k in order]
    return out


def designs_table(name: str) -> list[str]:
    """bench/tick_designs.py's results for this data set, when there are any."""
    path = RESULTS / f"{name}_designs.json"
    if not path.exists():
        return []
    d = json.loads(path.read_text())
    out = [
        f"Other designs of the detail tables, a tick of {d['batch']:,} logs on the full history "
        f"(`python -m bench.tick_designs --shape {d['shape']} --rows {name.rsplit('_', 1)[-1].upper()}`, "
        f"run {d['started']} UTC, medians of {d['rounds']} rotating rounds):",
        "",
        "| design | tick | / four tables | per-round ratio to four (median) |",
        "|---|---|---|---|",
    ]
    for design, ms in d["median_ms"].items():
        out.append(f"| {design} | {ms} ms | {d['ratio_to_four'][design]} | {d['paired_ratio_to_four'][design]} |")
    return out


def _tables(plan: dict[str, Any]) -> str:
    return "; ".join(f"`{t}` {v['rows']:,} rows ({', '.join(v['nodes'])})" for t, v in plan["tables"].items())


def reaggregation_rows(g: dict[str, Any]) -> list[str]:
    """Constraint 2: the product's default re-aggregation (five tables, the finest compared
    with the logs, the others summed from it where it changed) against today's (four
    tables, every one compared), each as a ratio to the bare GROUP BY; the product
    comparing every table (`check_every_table`) beside them for reference."""
    same, empty = g["ratio_unchanged"], g["ratio_rebuild"]
    u = {v: statistics.median(s) for v, s in g["unchanged_seconds"].items()}
    e = {v: s[0] for v, s in g["rebuild_seconds"].items()}
    paired = g["paired_five_over_four_unchanged"]
    return [
        f"| 2 | full re-aggregation / bare GROUP BY (hour, user, model) = {g['bare_median_seconds']:.2f} s, "
        f"history unchanged, medians of {len(g['unchanged_seconds']['five'])} alternating rounds | five, default "
        f"{u['five']:.2f} s = **{same['five']}**; four, every table compared (today's) {u['four']:.2f} s = "
        f"**{same['four']}**: **{g['five_over_four_unchanged']}x** today's ratio (per round "
        f"{min(paired)}-{max(paired)}); five, every table compared, {u['five_check']:.2f} s = "
        f"{same['five_check']}: {g['five_check_over_four_unchanged']}x | today's ratio (1.0x) | "
        f"{_ok(g['five_over_four_unchanged'] <= 1.0)} |",
        f"| 2b | the same into empty tables (one run each) | five, default {e['five']:.2f} s = **{empty['five']}**; "
        f"four {e['four']:.2f} s = **{empty['four']}**: **{g['five_over_four_rebuild']}x** today's ratio; five, "
        f"every table compared, {e['five_check']:.2f} s = {empty['five_check']}: "
        f"{g['five_check_over_four_rebuild']}x | today's ratio (1.0x) | {_ok(g['five_over_four_rebuild'] <= 1.0)} |",
    ]


def issue12(r: dict[str, Any]) -> list[str]:
    """Issue 12's constraints of one run: five summary tables against the four original ones."""
    out = ["| # | constraint | measured: five tables (the product) against four (today's) | target | |"]
    out.append("|---|---|---|---|---|")
    t = r.get("issue12_tick")
    if t:
        med = t["median_ms"]
        out.append(
            f"| 1 | tick of 10,000 logs ({t['consume_logs_per_tick']:,} consume) on the full history, medians of "
            f"{len(t['tick_seconds']['history_five'])} alternating rounds | {med['history_five']} ms / "
            f"{med['history_four']} ms = **{t['ratio']}x** (per-round ratios: median {t['paired_ratio_median']}, "
            f"{min(t['paired_ratios'])}-{max(t['paired_ratios'])}) | <= 1.5x | {_ok(t['ratio'] <= 1.5)} |"
        )
    g = r.get("issue12_reaggregation")
    if g and "five_check" in g["ratio_unchanged"]:
        out += reaggregation_rows(g)
    elif g:
        same, empty = g["ratio_unchanged"], g["ratio_rebuild"]
        d, e = g["ratio_unchanged_to_detail_bare"], g["ratio_rebuild_to_detail_bare"]
        out.append(
            f"| 2 | full re-aggregation / bare GROUP BY (hour, user, model) = {g['bare_median_seconds']:.2f} s, "
            f"history unchanged | five {statistics.median(g['unchanged_seconds']['five']):.2f} s = "
            f"**{same['five']}**; four {statistics.median(g['unchanged_seconds']['four']):.2f} s = "
            f"**{same['four']}**: **{g['five_over_four_unchanged']}x** today's ratio | today's ratio (1.0x) | "
            f"{_ok(g['five_over_four_unchanged'] <= 1.0)} |"
        )
        out.append(
            f"| 2b | the same into empty tables | five {g['rebuild_seconds']['five'][0]:.2f} s = **{empty['five']}**; "
            f"four {g['rebuild_seconds']['four'][0]:.2f} s = **{empty['four']}**: "
            f"**{g['five_over_four_rebuild']}x** today's ratio | today's ratio (1.0x) | "
            f"{_ok(g['five_over_four_rebuild'] <= 1.0)} |"
        )
        out.append(
            f"| 2c | each against the bare GROUP BY at its finest table's grain: five / the detail grain "
            f"(every dimension) = {g['bare_detail_median_seconds']:.2f} s, against four / (hour, user, model) | "
            f"unchanged: five **{d['five']}** against four {same['four']}: "
            f"**{g['five_at_detail_over_four_unchanged']}x**; into empty tables: five **{e['five']}** against "
            f"four {empty['four']}: **{g['five_at_detail_over_four_rebuild']}x** | today's ratio (1.0x) | "
            f"{_ok(g['five_at_detail_over_four_unchanged'] <= 1.0)}; {_ok(g['five_at_detail_over_four_rebuild'] <= 1.0)} |"
        )
    reads = r.get("issue12_reads")
    if reads:
        for i, (name, what) in enumerate(
            (
                ("self_hourly", f"`/api/data/self`, heavy user (user {reads['heavy_user']}), 30 days hourly"),
                ("site_daily", "`/api/data/` site-wide, 30 days daily"),
            )
        ):
            q = reads[name]
            five, four = q["five"], q["four"]
            out.append(
                f"| 3{'ab'[i]} | rows read by {what} | five: {_tables(five)}, "
                f"{five['shared_hit'] + five['shared_read']} buffers, {five['execution_ms']} ms; four: "
                f"{_tables(four)}, {four['shared_hit'] + four['shared_read']} buffers, {four['execution_ms']} ms | "
                f"the same tables, no more rows | {_ok(q['same_tables_and_rows'])} |"
            )
    csv = r.get("issue12_csv")
    if csv:
        for name in (k for k in csv if isinstance(csv[k], dict)):
            e = csv[name]
            for fmt in ("csv", "json"):
                if fmt not in e:
                    continue
                f = e[fmt]
                # Bounded: the worker grows by a few chunks of rows, whatever the answer's length.
                target, met = ("bounded (+16 MB at most)", _ok(f["growth_mb"] <= 16)) if fmt == "csv" else ("", "")
                out.append(
                    f"| 4 | {csv['days']} days site-wide by day x {e['group_by'].replace(',', ' x ')}, "
                    f"**{fmt.upper()}** | {f['rows']:,} rows, {f['bytes'] / 2**20:,.1f} MiB in {f['seconds']} s; "
                    f"serving worker RSS {f['idle_rss_mb']} MB before, **peak {f['peak_rss_mb']} MB** "
                    f"(+{f['growth_mb']} MB) | {target} | {met} |"
                )
            reads_of = e.get("reads")
            if reads_of:
                five, six = reads_of["five"], reads_of["six"]
                out.append(
                    f"| 4r | (no target) what that export's statement reads (EXPLAIN ANALYZE): five tables, days "
                    f"summed from hours | five: {_tables(five)}, {five['shared_hit'] + five['shared_read']:,} "
                    f"buffers, **{five['execution_ms']:,} ms**; the dropped six-table design (daily detail table): "
                    f"{_tables(six)}, {six['shared_hit'] + six['shared_read']:,} buffers, "
                    f"**{six['execution_ms']:,} ms** | | |"
                )
    if len(out) == 2:
        return []
    if t:
        out += ["", *tick_breakdown(t)]
    if r.get("issue12_reaggregation_statements"):
        out += ["", *reaggregation_breakdown(r["issue12_reaggregation_statements"])]
    return out


def render(name: str) -> str:
    r = json.loads((RESULTS / f"{name}.json").read_text())
    v = r["versions"]
    # No shape: results of the dense data before it carried keys, channels and groups.
    shape = r["data"].get("shape")
    runs = r.get("figure_runs")
    if runs:
        # A later partial run records its figures' start; the others ran with the file's run.
        runs = {k: runs.get(k, r["started"]) for k in r if k.startswith(("fig", "issue12_")) and k != "figure_runs"}
    starts = sorted(set(runs.values())) if runs else []
    if not runs:
        when = f"run {r['started']} UTC, {r['seconds']:.0f} s in all"
    elif len(starts) == 1:
        when = f"figures run {starts[0]} UTC on the data set built {r['data'].get('built', r['started'])} UTC"
    else:
        when = "figures run separately: " + ", ".join(
            f"{', '.join(k for k in sorted(runs) if runs[k] == t)} at {t}" for t in starts
        )
    size = name.rsplit("_", 1)[-1].upper()
    command = f"python -m bench.run --shape {shape} --rows {size}" if shape else f"python -m bench.run --rows {size}"
    # A results file without a shape is from before issue 12: four summary tables, and
    # data without keys, channels or groups (what the dense shape is otherwise).
    title = (
        f"{r['rows']:,} logs, {shape} shape"
        if shape
        else f"{r['rows']:,} logs, before issue 12 (four summary tables; data without keys, channels, groups)"
    )
    out = [f"### {title} (`{command}`, {when})", ""]
    init = r["data"].get("initial_rollup")
    built = f" (built {r['data']['built']} UTC)" if r["data"].get("built") and runs else ""
    if init:
        out += [
            f"Data set{built}: {r['data']['logs']:,} logs tiled from {r['data']['trace_requests']:,} real trace requests, "
            f"loaded in {r['data']['load_seconds']} s ({r['data']['total_seconds']} s with indexes and ANALYZE). "
            f"First rollup of the whole history: {init['logs']:,} consume logs in {init['seconds']} s "
            f"({init['logs_per_second']:,} logs/s, {init['batches']} transactions).",
            "",
        ]
    if r["data"].get("distribution"):
        out += [distribution_line(r["data"]["distribution"]), ""]
    out += ["| # | figure | measured | target | |", "|---|---|---|---|---|"]
    if "fig1" in r:
        f = r["fig1"]
        floor = statistics.median(f["bare_seconds"])
        out.append(
            f"| 1 | full re-aggregation / bare GROUP BY, history unchanged | "
            f"{statistics.median(f['reaggregate_unchanged_seconds']):.2f} s / {floor:.2f} s = "
            f"**{f['ratio_unchanged']}** | <= {f['target']} | {_ok(f['ratio_unchanged'] <= f['target'])} |"
        )
        out.append(
            f"| 1b | full re-aggregation into empty tables / bare GROUP BY | "
            f"{f['reaggregate_rebuild_seconds'][0]:.2f} s / {floor:.2f} s = **{f['ratio_rebuild']}** | "
            f"<= {f['target']} | {_ok(f['ratio_rebuild'] <= f['target'])} |"
        )
    if "fig2" in r:
        f = r["fig2"]
        out.append(
            f"| 2 | tick of 10,000 new logs ({f['consume_logs_per_tick']:,} consume) on the full history / "
            f"on an empty one (medians of {len(f['tick_seconds']['history'])}) | "
            f"{f['median_ms']['history']} ms / {f['median_ms']['empty']} ms = **{f['ratio']}** | <= 2 | "
            f"{_ok(f['ratio'] <= 2)} |"
        )
        out.append(
            f"| 2b | that tick on the full history | **{f['median_ms']['history']} ms** | < 100 ms | "
            f"{_ok(f['median_ms']['history'] < 100)} |"
        )
    if "fig3" in r:
        f = r["fig3"]
        s = f["self_hourly"]
        out.append(
            f"| 3a | `/api/data/self`, heavy user, 30 days hourly ({s['rows']:,} rows, {s['bytes'] // 1024} KB) | "
            f"**{s['api']['requests_per_second']:.0f} req/s**, p50 {s['api']['p50_ms']} ms, "
            f"p99 {s['api']['p99_ms']} ms | >= 1000 req/s, p99 <= 25 ms | "
            f"{_ok(s['api']['requests_per_second'] >= 1000 and s['api']['p99_ms'] <= 25)} |"
        )
        out.append(
            f"| 3b | the same answer from raw logs, same load | {s['raw']['requests_per_second']:.1f} req/s, "
            f"p50 {s['raw']['p50_ms']} ms, p99 {s['raw']['p99_ms']} ms; summary / raw = **{s['ratio']}x** | | |"
        )
        s = f["site_daily"]
        out.append(
            f"| 3c | `/api/data/` site-wide, 30 days daily ({s['rows']:,} rows, {s['bytes'] // 1024} KB) | "
            f"{s['api']['requests_per_second']:.0f} req/s, p50 {s['api']['p50_ms']} ms, p99 {s['api']['p99_ms']} ms | | |"
        )
        if s["raw"]["requests"] == 0:
            alone = s["alone_ms"]["raw"] / 1000
            bound = s["api"]["requests_per_second"] * alone / v["cores"]
            raw = (
                f"not one request finished in {f['seconds']} s; one alone, before the load, took {alone:.1f} s, "
                f"so at most {v['cores']} / {alone:.1f} = {v['cores'] / alone:.2f} req/s: summary / raw "
                f">= **{bound:.0f}x**"
            )
        else:
            raw = (
                f"{s['raw']['requests_per_second']:.2f} req/s, p50 {s['raw']['p50_ms']} ms; "
                f"summary / raw = **{s['ratio']}x**"
            )
        ratio = bound if s["raw"]["requests"] == 0 else s["ratio"]
        out.append(f"| 3d | the same answer from raw logs, same load | {raw} | >= 100x | {_ok(ratio >= 100)} |")
        s = f.get("self_daily")
        if s:
            out.append(
                f"| 3e | (no target) `/api/data/self`, heavy user, 30 days daily ({s['rows']} rows) | "
                f"{s['api']['requests_per_second']:.0f} req/s, p50 {s['api']['p50_ms']} ms, "
                f"p99 {s['api']['p99_ms']} ms | | |"
            )
    if "fig4" in r:
        f = r["fig4"]
        lag, rt = f.get("realtime=false"), f.get("realtime")
        if lag:
            out.append(
                f"| 4a | freshness, beat every {f['beat_interval_seconds']} s, `realtime=false` "
                f"({lag['seen']} probes) | median **{lag['median_seconds']} s**, max {lag['max_seconds']} s | | |"
            )
        if rt:
            out.append(
                f"| 4b | freshness with the real-time tail (default) | median **{rt['median_seconds']} s**, "
                f"max {rt['max_seconds']} s (the poll interval is 0.2 s) | | |"
            )
    if "fig5" in r:
        f = r["fig5"]
        out.append(
            f"| 5 | worker peak RSS during the full re-aggregations (prefork child running the task; "
            f"main process) | **{f['worst_child_mb']} MB**; {f['worst_main_mb']} MB | <= 300 MB | "
            f"{_ok(f['worst_child_mb'] <= 300)} |"
        )
    workers = f" ({r['fig3']['workers']} sync workers)" if "fig3" in r else ""
    out += [
        "",
        f"Machine: {v['cpu']}, {v['cores']} cores, {v['memory_gb']} GiB; PostgreSQL {v['postgresql']} "
        f"(default settings), Python {v['python']}, SQLAlchemy {v['sqlalchemy']}, Flask {v['flask']}, "
        f"gunicorn {v['gunicorn']}{workers}, "
        f"Celery {v['celery']}, "
        f"{v['wrk']}.",
        "",
    ]
    storage = r.get("storage") or r["data"].get("storage")
    if storage:
        out += [*storage_table(storage), ""]
    constraints = issue12(r)
    if constraints:
        out += ["Issue 12's constraints, five summary tables against the four original ones, in this run:", ""]
        out += [*constraints, ""]
    designs = designs_table(name)
    if designs:
        out += [*designs, ""]
    return "\n".join(out)


def _order(name: str) -> tuple[str, int]:
    """Results files by shape, then size: dense_1m, dense_10m, sparse_2m."""
    r = json.loads((RESULTS / f"{name}.json").read_text())
    return r["data"].get("shape", "dense"), r["rows"]


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(
        (p.stem for p in RESULTS.glob("*.json") if not p.stem.endswith("_designs")), key=_order
    )
    print("\n".join(render(name) for name in names))
