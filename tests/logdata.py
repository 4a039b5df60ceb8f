"""Shared helpers for the rollup tests: writing gateway logs, and the truth to compare
the summary tables against.

The truth is computed in Python from the raw committed rows of `logs` (read through a
fresh connection), independently of shared.rollup and shared.buckets: consume logs only
(type 2), hour = created_at - created_at % 3600, day = the first instant whose local
date (in the stats time zone) is the log's local date, token_used = prompt + completion,
NULLs as 0 / ''.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from datetime import UTC, date, datetime
from functools import cache
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from shared import aggregation as agg
from shared import models as m
from shared.config import Settings
from shared.rollup import tick

HOUR = 3600
DAY = 86400
MEASURES = ("count", "quota", "token_used", "prompt_tokens", "completion_tokens")
SUMMARY_TABLES = ("hourly_usage", "daily_usage", "hourly_model_usage", "daily_model_usage")
DETAIL_TABLES = ("hourly_detail_usage",)
# The oracle's own statement of the detail tables' key (not taken from shared.aggregation).
DETAIL_KEY = ("user_id", "created_at", "model_name", "token_id", "channel_id", "use_group", "username", "token_name")

_seq = itertools.count(1)


def log(
    user_id=1,
    created_at=1_700_000_000,
    model="gpt-4o",
    quota=None,
    prompt=None,
    completion=None,
    kind=m.LOG_CONSUME,
    username=None,
    token_id=None,
    token_name=None,
    channel=None,
    group=None,
):
    """One `logs` row as new-api writes it. Measures default to distinct-ish values so that
    a sum over the wrong rows is unlikely to match by accident; the key, channel and group
    vary too (each user has two keys), so that every summary's dimensions are exercised."""
    n = next(_seq)
    token_id = (user_id or 0) * 10 + n % 2 if token_id is None else token_id
    return {
        "user_id": user_id,
        "username": f"u{user_id}" if username is None else username,
        "created_at": created_at,
        "type": kind,
        "model_name": model,
        "quota": 100 + n % 97 if quota is None else quota,
        "prompt_tokens": 10 + n % 13 if prompt is None else prompt,
        "completion_tokens": 3 + n % 7 if completion is None else completion,
        "content": "",
        "token_id": token_id,
        "token_name": f"key{token_id}" if token_name is None else token_name,
        "channel_id": 1 + n % 3 if channel is None else channel,
        "group": ("default", "vip")[n % 2] if group is None else group,
        "is_stream": False,
    }


def insert(target, rows) -> list[int]:
    """Insert `rows` (dicts from `log`) through `target` -- an Engine (committed at once)
    or a Connection (in its open transaction, left open) -- and return their ids."""
    if isinstance(rows, dict):
        rows = [rows]
    if isinstance(target, sa.engine.Engine):
        with target.begin() as conn:
            return insert(conn, rows)
    ids = []
    for row in rows:
        ids.append(target.execute(sa.insert(m.logs).values(**row).returning(m.logs.c.id)).scalar_one())
    return ids


# --- time ------------------------------------------------------------------------------


def utc(*args) -> int:
    """Unix seconds of a UTC wall-clock time: utc(2024, 3, 10, 5, 30)."""
    return int(datetime(*args, tzinfo=UTC).timestamp())


def at(tz: str, *args, fold=0) -> int:
    """Unix seconds of a local wall-clock time in `tz`."""
    return int(datetime(*args, tzinfo=ZoneInfo(tz), fold=fold).timestamp())


def _local_date(ts: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts, tz=UTC).astimezone(zone).date()


@cache
def _first_instant(d: date, tz: str) -> int:
    # Every zone of the last decades changes offset on a quarter hour, so the first instant
    # of a local date is a multiple of 900 s: the earliest quarter hour whose local date is
    # d, searched over every instant that can be in d anywhere (offsets are within
    # -12 h..+14 h of UTC). Not merely the start of the run of d that holds a given log:
    # where clocks went back across midnight, as in Newfoundland's 00:01 changes until
    # 2011, a date can start, give way to the previous one for an hour, and resume.
    zone = ZoneInfo(tz)
    utc_midnight = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
    return min(t for t in range(utc_midnight - 15 * HOUR, utc_midnight + 13 * HOUR, 900) if _local_date(t, zone) == d)


def day_of(ts: int, tz: str) -> int:
    """Start (unix seconds) of the local day holding `ts` in `tz`: its first instant."""
    if tz == "UTC":
        return ts - ts % DAY
    return _first_instant(_local_date(ts, ZoneInfo(tz)), tz)


def hour_of(ts: int) -> int:
    return ts - ts % HOUR


def day_bounds(ts: int, tz: str) -> tuple[int, int]:
    """[start, end) of the local day holding `ts`."""
    lo = day_of(ts, tz)
    return lo, day_of(lo + 26 * HOUR, tz)


# --- the truth and the tables ------------------------------------------------------------


def log_select() -> sa.Select:
    """The columns of `logs` the oracles read, in id order: the one reader of the raw
    logs for the rollup's oracle here and the API's (tests/api_support.committed_logs)."""
    lg = m.logs.c
    return sa.select(
        lg.id,
        lg.type,
        lg.user_id,
        lg.username,
        lg.created_at,
        lg.model_name,
        lg.quota,
        lg.prompt_tokens,
        lg.completion_tokens,
        lg.token_id,
        lg.token_name,
        lg.channel_id,
        lg.group,
    ).order_by(lg.id)


def raw_consume_logs(engine) -> list:
    """Committed consume logs, as the rollup should read them."""
    with engine.connect() as conn:
        return conn.execute(log_select().where(m.logs.c.type == m.LOG_CONSUME)).all()


def expected_tables(engine, tz: str, *, usernames: bool = True) -> dict[str, dict]:
    """The summary tables as a GROUP BY over the raw committed consume logs:
    {table: {key: measures}}; per-user keys are (user_id, bucket, model), site-wide keys
    (bucket, model), detail keys (user_id, bucket, model, token_id, channel_id, group,
    username, token_name). With `usernames`, per-user values end with max(username)."""
    out = {name: defaultdict(lambda: [0] * 5) for name in (*SUMMARY_TABLES, *DETAIL_TABLES)}
    names: dict = defaultdict(str)
    for r in raw_consume_logs(engine):
        if r.created_at is None:
            continue  # no time, no bucket: such a log is skipped (new-api always sets it)
        user, model = r.user_id or 0, r.model_name or ""
        q, p, c = r.quota or 0, r.prompt_tokens or 0, r.completion_tokens or 0
        vals = (1, q, p + c, p, c)
        hour, day = hour_of(r.created_at), day_of(r.created_at, tz)
        detail = (r.token_id or 0, r.channel_id or 0, r.group or "", r.username or "", r.token_name or "")
        for table, key in (
            ("hourly_usage", (user, hour, model)),
            ("daily_usage", (user, day, model)),
            ("hourly_model_usage", (hour, model)),
            ("daily_model_usage", (day, model)),
            # Hours cut at local midnight: the later of the hour's start and the day's.
            ("hourly_detail_usage", (user, max(hour, day), model, *detail)),
        ):
            acc = out[table][key]
            for i, v in enumerate(vals):
                acc[i] += v
        for table, key in (("hourly_usage", (user, hour, model)), ("daily_usage", (user, day, model))):
            names[table, key] = max(names[table, key], r.username or "")
    result = {}
    for table, rows in out.items():
        result[table] = {}
        for key, vals in rows.items():
            if usernames and table in ("hourly_usage", "daily_usage"):
                result[table][key] = (*vals, names[table, key])
            else:
                result[table][key] = tuple(vals)
    return result


def actual_tables(engine, *, usernames: bool = True) -> dict[str, dict]:
    """The four summary tables as they are, in the shape of `expected_tables`."""
    result = {}
    with engine.connect() as conn:
        for table in (agg.hourly_usage, agg.daily_usage):
            c = table.c
            cols = [c.user_id, c.created_at, c.model_name, *(c[x] for x in MEASURES)]
            if usernames:
                cols.append(c.username)
            result[table.name] = {(r[0], r[1], r[2]): tuple(r[3:]) for r in conn.execute(sa.select(*cols))}
        for table in (agg.hourly_model_usage, agg.daily_model_usage):
            c = table.c
            result[table.name] = {
                (r[0], r[1]): tuple(r[2:])
                for r in conn.execute(sa.select(c.created_at, c.model_name, *(c[x] for x in MEASURES)))
            }
        for table in (agg.hourly_detail_usage,):
            c = table.c
            key = [c[k] for k in DETAIL_KEY]
            result[table.name] = {
                tuple(r[: len(key)]): tuple(r[len(key) :])
                for r in conn.execute(sa.select(*key, *(c[x] for x in MEASURES)))
            }
    return result


def diff(expected: dict, actual: dict, limit: int = 8) -> str:
    """A readable difference between two `expected_tables`-shaped dicts ('' when equal)."""
    lines = []
    for table in expected:
        e, a = expected[table], actual.get(table, {})
        bad = sorted(set(e) | set(a), key=repr)
        bad = [k for k in bad if e.get(k) != a.get(k)]
        if bad:
            lines.append(f"{table}: {len(bad)} differing rows (expected {len(e)}, have {len(a)})")
            for k in bad[:limit]:
                lines.append(f"    {k}: expected {e.get(k)} have {a.get(k)}")
    return "\n".join(lines)


def assert_exact(engine, tz: str, *, usernames: bool = True, where: str = "") -> dict:
    """Every summary table equals the GROUP BY over the raw committed consume logs."""
    expected = expected_tables(engine, tz, usernames=usernames)
    actual = actual_tables(engine, usernames=usernames)
    problem = diff(expected, actual)
    assert not problem, f"summary tables differ from the raw logs {where}\n{problem}"
    return expected


def totals(engine, table: str = "hourly_usage") -> tuple:
    """(count, quota) summed over a whole summary table."""
    with engine.connect() as conn:
        n, q = conn.execute(sa.text(f"SELECT coalesce(sum(count), 0), coalesce(sum(quota), 0) FROM {table}")).one()
    return int(n), int(q)


def gaps(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.select(m.rollup_gap.c.lo, m.rollup_gap.c.hi, m.rollup_gap.c.settled_at).order_by(m.rollup_gap.c.lo)
            )
        ]


def last_log_id(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(m.rollup_state.c.last_log_id)).scalar_one()


def forget_gaps(engine: sa.Engine, settings: Settings, rounds: int = 20) -> None:
    """Tick until no id gap is left, once every writer has finished: a gap is settled by
    one tick and forgotten by the next. The rounds leave room for an autovacuum worker
    briefly holding a lock on logs (PostgreSQL), and each waits 0.15 s so that InnoDB
    refreshes its INNODB_TRX cache, which a tick needs fresh to settle (MariaDB)."""
    for _ in range(rounds):
        time.sleep(0.15 if engine.dialect.name == "mysql" else 0.05)
        tick(engine, settings, wait=True)
        if not gaps(engine):
            return
    raise AssertionError(f"id gaps were never forgotten although no writer is left: {gaps(engine)}")
