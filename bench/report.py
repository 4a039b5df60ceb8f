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
    summaries = [t for name, t in storage["tables"].items() if name != "logs"]
    total = {k: sum(t[k] for t in summaries) for k in ("table_bytes", "index_bytes", "total_bytes")}
    per_million = sum(t["bytes_per_million_logs"] for t in summaries)
    out.append(
        f"| all summary tables | | | {_mib(total['table_bytes'])} | {_mib(total['index_bytes'])} | "
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


def render(name: str) -> str:
    r = json.loads((RESULTS / f"{name}.json").read_text())
    v = r["versions"]
    # No shape: results of the dense data before it carried keys, channels and groups.
    shape = r["data"].get("shape")
    runs = r.get("figure_runs")
    when = (
        f"run {r['started']} UTC, {r['seconds']:.0f} s in all"
        if not runs
        else "figures re-run separately: " + ", ".join(f"{k} at {v}" for k, v in sorted(runs.items()))
    )
    size = name.rsplit("_", 1)[-1].upper()
    command = f"python -m bench.run --shape {shape} --rows {size}" if shape else f"python -m bench.run --rows {size}"
    title = f"{r['rows']:,} logs, {shape} shape" if shape else f"{r['rows']:,} logs"
    out = [f"### {title} (`{command}`, {when})", ""]
    init = r["data"].get("initial_rollup")
    if init:
        out += [
            f"Data set: {r['data']['logs']:,} logs tiled from {r['data']['trace_requests']:,} real trace requests, "
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
    out += [
        "",
        f"Machine: {v['cpu']}, {v['cores']} cores, {v['memory_gb']} GiB; PostgreSQL {v['postgresql']} "
        f"(default settings), Python {v['python']}, SQLAlchemy {v['sqlalchemy']}, Flask {v['flask']}, "
        f"gunicorn {v['gunicorn']} ({r.get('fig3', {}).get('workers', '?')} sync workers), Celery {v['celery']}, "
        f"{v['wrk']}.",
        "",
    ]
    storage = r.get("storage") or r["data"].get("storage")
    if storage:
        out += [*storage_table(storage), ""]
    return "\n".join(out)


def _order(name: str) -> tuple[str, int]:
    """Results files by shape, then size: dense_1m, dense_10m, sparse_2m."""
    r = json.loads((RESULTS / f"{name}.json").read_text())
    return r["data"].get("shape", "dense"), r["rows"]


if __name__ == "__main__":
    names = sys.argv[1:] or sorted((p.stem for p in RESULTS.glob("*.json")), key=_order)
    print("\n".join(render(name) for name in names))
