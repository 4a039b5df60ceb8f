"""GET /api/rankings: the models and vendors that used the most tokens site-wide over a
rolling window, as new-api's rankings page shows them.

A period is a rolling window [now - duration, now] and its bucket size:

    today  24 h    buckets of 3600 s
    week   7 d     86400 s
    month  30 d    86400 s
    year   365 d   604800 s

Buckets are floor(hour / size) * size of each usage hour, aligned to the Unix epoch (so
UTC days, and weeks starting on Thursday 1970-01-01). A window holds the usage hours
starting in [start, end], as new-api's hourly quota_data rows do; the previous window
[start - duration, start - 1] gives growth and previous ranks.

Everything is ranked by tokens (token_used = prompt + completion): one query shape,

    SELECT model_name[, bucket], SUM(token_used) FROM <window> WHERE model_name <> ''
    GROUP BY model_name[, bucket] HAVING SUM(token_used) > 0

where <window> is shared.queries.source -- the site-wide summary rows plus the consume
logs not rolled up yet -- for the window's hours: daily rows for whole UTC days when
the daily rows are UTC days (STATS_TIMEZONE is UTC), hourly rows for the partial days at
either end and for every hour otherwise. All statements read one snapshot (the caller's
queries.snapshot connection), so the windows agree with each other and with the rollup.

The vendor of a model comes from shared.vendors (a default table the operator can
override). What remains in Python is arranging at most a few thousand per-model rows:
ranks, shares, growth, the top-10 and top-5 series with their "Others".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import queries
from .queries import View
from .rollup import Progress, read_progress
from .vendors import VendorTable

HOUR = 3600
DAY = 86400
# A UTC day is answered from its daily row once all of its hours lie in the window.
LAST_HOUR_OF_DAY = DAY - HOUR

MODELS_LIMIT = 20
HISTORY_MODELS = 10
HISTORY_VENDORS = 5
MOVERS_LIMIT = 6
OTHERS = "Others"
OTHERS_VENDOR = "Various"
CATEGORY = "all"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class Period:
    name: str
    duration: int
    bucket_size: int


PERIODS: Mapping[str, Period] = {
    p.name: p
    for p in (
        Period("today", DAY, HOUR),
        Period("week", 7 * DAY, DAY),
        Period("month", 30 * DAY, DAY),
        Period("year", 365 * DAY, 7 * DAY),
    )
}
DEFAULT_PERIOD = "week"


class InvalidPeriod(ValueError):
    """A period that is not today, week, month or year."""


def period(name: str | None) -> Period:
    """The period called `name`; absent or empty is the week, as in new-api."""
    if not name:
        return PERIODS[DEFAULT_PERIOD]
    found = PERIODS.get(name)
    if found is None:
        raise InvalidPeriod(f"invalid ranking period: {name}")
    return found


# --- the query --------------------------------------------------------------------------

# A window as the parts read from one view each: (view, first bucket, last bucket).
Part = tuple[View, int, int]


def window_parts(start: int, end: int, stats_tz: str, realtime: bool, *, whole_days: bool) -> list[Part]:
    """The usage hours starting in [start, end] as sources to read: with `whole_days`
    (and daily rows that are UTC days), the UTC days all of whose hours lie inside from
    the daily rows and the hours before and after them from the hourly rows; otherwise
    hourly rows throughout."""
    hourly = View(granularity="hour", tz=stats_tz, stats_tz=stats_tz, realtime=realtime)
    daily = View(granularity="day", tz="UTC", stats_tz=stats_tz, realtime=realtime)
    if not (whole_days and daily.from_daily):
        return [(hourly, start, end)]
    first_day = -(-start // DAY) * DAY
    last_day = (end - LAST_HOUR_OF_DAY) // DAY * DAY
    if first_day > last_day:
        return [(hourly, start, end)]
    parts: list[Part] = []
    if start < first_day:
        parts.append((hourly, start, first_day - 1))
    parts.append((daily, first_day, last_day))
    if last_day + DAY <= end:
        parts.append((hourly, last_day + DAY, end))
    return parts


def model_tokens(
    conn: Connection, parts: Sequence[Part], bucket_size: int | None = None, progress: Progress | None = None
) -> list[tuple[Any, ...]]:
    """(model_name, tokens) over the window, or (model_name, bucket, tokens) with
    `bucket_size`: SUM(token_used) by model (and bucket), models with a name and
    tokens only."""
    selects = []
    for view, lo, hi in parts:
        src = queries.source(conn, "site", view, lo, hi, progress)
        c = src.c
        # source() may hold rows beyond [lo, hi] (the tail is filtered on created_at
        # only); the answer's filter is on the bucket, as in shared.queries.
        selects.append(
            sa.select(c.created_at, c.model_name, c.token_used).where(c.created_at.between(lo, hi), c.model_name != "")
        )
    rows = (selects[0] if len(selects) == 1 else sa.union_all(*selects)).subquery("ranking_window")
    keys: list[Any] = [rows.c.model_name]
    if bucket_size is not None:
        keys.append(rows.c.created_at - rows.c.created_at % sa.literal_column(str(bucket_size)))
    tokens = sa.func.sum(rows.c.token_used)
    statement = sa.select(*keys, sa.cast(tokens, sa.BigInteger)).group_by(*keys).having(tokens > 0)
    return [tuple(r) for r in conn.execute(statement)]


# --- the answer -------------------------------------------------------------------------


def ratio4(num: int, den: int) -> float:
    """num / den (den > 0) rounded to 4 decimals, halves away from zero, in integers so
    that a half is a half (a float quotient can land just below it)."""
    ten_thousandths = (2 * abs(num) * 10_000 + den) // (2 * den)
    return math.copysign(ten_thousandths / 10_000, num)


def share(part: int, whole: int) -> float:
    return ratio4(part, whole) if whole > 0 else 0.0


def growth_pct(current: int, previous: int) -> float:
    """Percent change from the previous window; 100 for something new."""
    if previous == 0:
        return 100.0 if current > 0 else 0.0
    return ratio4((current - previous) * 100, previous)


def ranked(totals: Mapping[str, int]) -> list[tuple[str, int]]:
    """By tokens, largest first; ties by name in code point order."""
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def label(ts: int, bucket_size: int, zone: ZoneInfo) -> str:
    """An hour as HH:MM in `zone` (STATS_TIMEZONE); a UTC day or week as the date it
    starts on ("Jan 2"), which is the day it covers."""
    if bucket_size < DAY:
        return datetime.fromtimestamp(ts, tz=zone).strftime("%H:%M")
    d = datetime.fromtimestamp(ts, tz=UTC)
    return f"{MONTHS[d.month - 1]} {d.day}"


def bucket_starts(start: int, end: int, bucket_size: int) -> list[int]:
    """Every bucket holding an hour that starts in [start, end]."""
    first_hour = -(-start // HOUR) * HOUR
    last_hour = end // HOUR * HOUR
    if first_hour > last_hour:
        return []
    return list(range(first_hour // bucket_size * bucket_size, last_hour + 1, bucket_size))


def rankings(
    conn: Connection,
    which: Period,
    now: int,
    *,
    vendors: VendorTable,
    stats_tz: str = "UTC",
    realtime: bool = True,
) -> dict[str, Any]:
    """The rankings of `which` period ending at `now`, read on `conn` (one snapshot)."""
    start = now - which.duration
    whole_days = which.bucket_size >= DAY

    def parts(lo: int, hi: int) -> list[Part]:
        return window_parts(lo, hi, stats_tz, realtime, whole_days=whole_days)

    progress = read_progress(conn) if realtime else None  # once for every part of every window
    current: dict[str, int] = {m: t for m, t in model_tokens(conn, parts(start, now), progress=progress)}
    previous = {m: t for m, t in model_tokens(conn, parts(start - which.duration, start - 1), progress=progress)}
    by_bucket = model_tokens(conn, parts(start, now), which.bucket_size, progress)

    order = ranked(current)
    rank = {name: i for i, (name, _) in enumerate(order, 1)}
    previous_rank = {name: i for i, (name, _) in enumerate(ranked(previous), 1)}
    vendor_of = {name: vendors.vendor(name) for name in (*current, *previous)}
    grand_total = sum(current.values())

    models = []
    for name, total in order[:MODELS_LIMIT]:
        entry: dict[str, Any] = {"rank": rank[name]}
        if name in previous_rank:
            entry["previous_rank"] = previous_rank[name]
        entry.update(
            model_name=name,
            vendor=vendor_of[name],
            category=CATEGORY,
            total_tokens=total,
            share=share(total, grand_total),
            growth_pct=growth_pct(total, previous.get(name, 0)),
        )
        models.append(entry)

    vendor_current: dict[str, int] = defaultdict(int)
    vendor_previous: dict[str, int] = defaultdict(int)
    vendor_models: dict[str, list[str]] = defaultdict(list)
    for name, total in order:  # rank order: a vendor's first model is its top model
        vendor_current[vendor_of[name]] += total
        vendor_models[vendor_of[name]].append(name)
    for name, total in previous.items():
        vendor_previous[vendor_of[name]] += total
    vendor_order = ranked(vendor_current)
    vendor_list = [
        {
            "rank": i,
            "vendor": vendor,
            "total_tokens": total,
            "share": share(total, grand_total),
            "growth_pct": growth_pct(total, vendor_previous.get(vendor, 0)),
            "models_count": len(vendor_models[vendor]),
            "top_model": vendor_models[vendor][0],
        }
        for i, (vendor, total) in enumerate(vendor_order, 1)
    ]

    # Movers: models ranked in both windows, by places gained (lost), then current rank.
    moved = [(previous_rank[name] - rank[name], rank[name], name) for name, _ in order if name in previous_rank]

    def mover(delta: int, current_rank: int, name: str) -> dict[str, Any]:
        return {
            "model_name": name,
            "vendor": vendor_of[name],
            "rank_delta": delta,
            "current_rank": current_rank,
            "growth_pct": growth_pct(current[name], previous[name]),
        }

    top_movers = [mover(*m) for m in sorted((m for m in moved if m[0] > 0), key=lambda m: (-m[0], m[1]))]
    top_droppers = [mover(*m) for m in sorted((m for m in moved if m[0] < 0), key=lambda m: (m[0], m[1]))]

    zone = ZoneInfo(stats_tz)
    buckets = [
        {"ts": rfc3339(ts), "label": label(ts, which.bucket_size, zone)}
        for ts in bucket_starts(start, now, which.bucket_size)
    ]
    return {
        "models": models,
        "vendors": vendor_list,
        "top_movers": top_movers[:MOVERS_LIMIT],
        "top_droppers": top_droppers[:MOVERS_LIMIT],
        "models_history": _models_history(order, by_bucket, vendor_of, which.bucket_size, zone, buckets),
        "vendor_share_history": _vendor_share_history(
            vendor_order, by_bucket, vendor_of, grand_total, which.bucket_size, zone, buckets
        ),
    }


def _series(
    by_bucket: Sequence[tuple[Any, ...]], name_of: Mapping[str, str]
) -> tuple[dict[tuple[int, str], int], dict[int, int]]:
    """Tokens per (bucket, series), where `name_of` maps a model to its series, and the
    total of each bucket."""
    tokens: dict[tuple[int, str], int] = defaultdict(int)
    bucket_total: dict[int, int] = defaultdict(int)
    for model_name, bucket, total in by_bucket:
        tokens[int(bucket), name_of.get(model_name, OTHERS)] += total
        bucket_total[int(bucket)] += total
    return tokens, bucket_total


def _models_history(
    order: Sequence[tuple[str, int]],
    by_bucket: Sequence[tuple[Any, ...]],
    vendor_of: Mapping[str, str],
    bucket_size: int,
    zone: ZoneInfo,
    buckets: list[dict[str, str]],
) -> dict[str, Any]:
    """Tokens per bucket of the top 10 models and of all the others together."""
    top = order[:HISTORY_MODELS]
    top_names = {name for name, _ in top}
    series: list[dict[str, Any]] = [{"name": name, "vendor": vendor_of[name], "total": total} for name, total in top]
    others = sum(total for _, total in order[HISTORY_MODELS:])
    if others:
        series.append({"name": OTHERS, "vendor": OTHERS_VENDOR, "total": others})
    tokens, _ = _series(by_bucket, {name: name if name in top_names else OTHERS for name, _ in order})
    points = [
        {
            "ts": rfc3339(ts),
            "label": label(ts, bucket_size, zone),
            "model": s["name"],
            "vendor": s["vendor"],
            "tokens": tokens[ts, s["name"]],
        }
        for ts in sorted({ts for ts, _ in tokens})
        for s in series
        if tokens.get((ts, s["name"]))
    ]
    return {"points": points, "models": series, "buckets": buckets}


def _vendor_share_history(
    vendor_order: Sequence[tuple[str, int]],
    by_bucket: Sequence[tuple[Any, ...]],
    vendor_of: Mapping[str, str],
    grand_total: int,
    bucket_size: int,
    zone: ZoneInfo,
    buckets: list[dict[str, str]],
) -> dict[str, Any]:
    """Each bucket's tokens and share (of that bucket) of the top 5 vendors and of all
    the others together."""
    top = vendor_order[:HISTORY_VENDORS]
    top_names = {vendor for vendor, _ in top}
    series: list[dict[str, Any]] = [
        {"name": vendor, "total": total, "share": share(total, grand_total)} for vendor, total in top
    ]
    others = sum(total for _, total in vendor_order[HISTORY_VENDORS:])
    if others:
        series.append({"name": OTHERS, "total": others, "share": share(others, grand_total)})
    series_of = {name: v if v in top_names else OTHERS for name, v in vendor_of.items()}
    tokens, bucket_total = _series(by_bucket, series_of)
    points = [
        {
            "ts": rfc3339(ts),
            "label": label(ts, bucket_size, zone),
            "vendor": s["name"],
            "share": share(tokens[ts, s["name"]], bucket_total[ts]),
            "tokens": tokens[ts, s["name"]],
        }
        for ts in sorted(bucket_total)
        for s in series
        if tokens.get((ts, s["name"]))
    ]
    return {"points": points, "vendors": series, "buckets": buckets}
