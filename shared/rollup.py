"""The rollup: every consume log counted once, and only once, into the summary tables.

In one sentence: under a lock and in one snapshot, aggregate the logs whose ids lie in
(`rollup_state.last_log_id`, H] -- plus any that have since committed inside a
remembered gap -- with the one aggregation of shared.aggregation, fold the result into
every summary table (INSERT ... ON CONFLICT DO UPDATE that adds), and move
`last_log_id` to H in the same transaction.

What counts, the buckets, the dimensions, the measures and the summary tables are
shared.aggregation's; this module decides only which logs, when, and under what lock.

Why this design (pg_incremental's sequence pipeline, without its wait):
- Cost follows the new rows: a tick reads logs by primary key above a watermark, so ten
  thousand new logs cost the same on an empty table as on one with ten million rows.
- A log with an old `created_at` is simply added to its old bucket: buckets are keyed by
  time, progress by id, so nothing about a late timestamp is special.
- Late commits. Ids are handed out when a gateway transaction inserts, not when it
  commits, so a tick may see id 7 while id 6 is still in flight. pg_incremental waits
  for such writers; we never wait, we remember: every id range the tick passed without
  seeing it becomes a `rollup_gap`. Later ticks count whatever commits inside a gap
  (joining logs to rollup_gap by id) and split the gap around it. A gap is forgotten
  once no transaction that began before the gap was seen still writes to `logs`
  (pg_locks + pg_stat_activity): such a transaction is the only one that can hold its
  ids. The check happens in one tick and the forgetting in the next, so that whatever
  committed in between is counted first, in a snapshot taken after the check.
  On SQLite a tick holds the single write lock, so no write is ever in flight, a missing
  id is a rolled-back one, and no gap is kept.
- Crashes: the aggregation, the gap bookkeeping and the new watermark commit together,
  or not at all; a killed tick leaves nothing behind and the next one redoes it.
- Concurrency: ticks and re-aggregation chunks take one lock (a PostgreSQL advisory lock
  taken *before* the REPEATABLE READ snapshot, so the snapshot always includes the
  previous holder's commit; SQLite's BEGIN IMMEDIATE). A tick that finds the lock taken
  skips instead of queueing.
- Re-aggregation recomputes whole local days from raw logs, but only the logs the
  rollup has counted (id <= last_log_id and in no gap), one chunk of days per
  transaction, and writes only the rows that differ (a FULL JOIN of the fresh rows with
  the stored ones): re-checking unchanged history costs an aggregation and a comparison,
  not a rewrite of every row. The comparison is with the finest table only; the others
  are summed again from it at the keys that changed (`_rederive`), since every
  transaction writes them together. A chunk aggregates its days *without* the lock,
  from the logs counted at one moment of progress P0 (last_log_id, then the gaps: see
  `_progress_then`), so ticks and other chunks run meanwhile; then, under the lock, it
  adds the logs of its days counted since (ids above P0's watermark, or inside P0's
  gaps, and in no gap now: exactly what the ticks in between folded), so its fresh rows
  are the days' counted logs at that moment, and compares and writes. A chunk killed
  before its write leaves only temporary tables; its write commits whole or not at all.

Sequences with CACHE > 1 hand out ids out of order across sessions; the gap rule needs
the default CACHE 1 (new-api's bigserial), and a tick refuses to run otherwise
(`check_log_sequence`).

On MySQL and MariaDB (InnoDB) the same design, with InnoDB's means:
- The lock is GET_LOCK (named after the database), taken before the transaction.
- One view of the logs: in REPEATABLE READ an INSERT ... SELECT reads `logs` with
  locking reads, which see the newest commits, not the snapshot (and can wait for a
  gateway's open insert). So rollup transactions run in READ COMMITTED, where every
  INSERT/CREATE ... SELECT is a consistent, lock-free read of one statement's view, and
  a tick reads the new logs and the logs inside gaps once, in one statement, into a
  temporary copy (`_copy_logs`) from which the delta, the gaps seen and the gap ids
  found all come. Our own tables are written only under the lock, so READ COMMITTED
  shows each tick its predecessor's commit.
- Gaps: AUTO_INCREMENT hands ids out before commit, in increasing order in time (in
  every innodb_autoinc_lock_mode: the counter only grows). An id absent from the copy
  but below one present belongs to a transaction that took it before the copy was
  read, so started before, and only one still running can commit it. A gap is settled
  when information_schema.innodb_trx lists no other transaction, started at or before
  the gap was seen (trx_started, whole seconds: compared with <=), that has modified
  rows (trx_rows_modified: an inserted row is one) or is running a statement now
  (trx_query: an insert between taking its id and writing its row), on a connection to
  this database or to none (PROCESSLIST.DB; new-api writes logs from connections to the
  database holding them, and a writer idle in another database of a shared server would
  otherwise hold every gap open). A transaction that has modified nothing and runs
  nothing holds no id it can still commit. innodb_trx is a cache InnoDB refreshes only
  after 0.1 s unread: a tick settles only gaps recorded by earlier ticks, and only when
  its one read of innodb_trx lists the tick's own transaction (so the cache is newer
  than every such gap) and InnoDB did not truncate it; otherwise a later tick does.
- `check_innodb` refuses what breaks this, with the fix: logs not InnoDB or without
  AUTO_INCREMENT, auto_increment_increment > 1 (several primaries hand out interleaved
  ids, and innodb_trx shows only this server's transactions), innodb_trx unreadable
  (MariaDB and MySQL require the PROCESS privilege), statement-based binary logging
  (READ COMMITTED cannot write under it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler

from . import aggregation as agg
from . import models as m
from .aggregation import AnySelect
from .answer_version import bump_generation
from .buckets import HOUR, day_start, first_split_hour, hour_start, local_midnight, next_local_midnight
from .config import Settings

log = logging.getLogger("usage_stats.rollup")

# pg_advisory_lock key shared by ticks, re-aggregation and retention ("usag").
LOCK_KEY = 0x75736167
# MySQL's GET_LOCK names are server-wide: one lock per database (the name has at most 64
# characters; database names at most 64 too, so it is cut).
MYSQL_LOCK = sa.text("SELECT GET_LOCK(LEFT(CONCAT('usage-stats:', DATABASE()), 64), :timeout)")
MYSQL_UNLOCK = sa.text("SELECT RELEASE_LOCK(LEFT(CONCAT('usage-stats:', DATABASE()), 64))")
# A tick's copy of the logs it reads (MySQL; see the module's docstring).
LOG_COPY = "rollup_logs"


class RollupError(RuntimeError):
    """The rollup cannot go on until an operator acts; the message says how."""


@dataclass
class TickResult:
    logs: int = 0  # consume logs counted
    buckets: int = 0  # rows of the finest hourly summary table touched
    batches: int = 0  # transactions committed
    seconds: float = 0.0
    skipped: bool = False  # another tick or a re-aggregation held the lock
    more: bool = False  # the batch was full: more logs may be waiting
    last_log_id: int = 0
    logs_behind: int = 0
    lag_seconds: int = 0


@dataclass
class ReaggregateResult:
    start: int
    end: int
    chunks: int = 0
    logs: int = 0
    seconds: float = 0.0
    days: list[int] = field(default_factory=list, repr=False)


# The delta of one transaction, at the finest grain of every summary: per log's hour,
# local day and every dimension. Each summary table is folded from it.
DELTA_GRAINS = ("hour", "day")
delta = sa.Table(
    "rollup_delta",
    sa.MetaData(),
    *(sa.Column(grain, sa.BigInteger, nullable=False) for grain in DELTA_GRAINS),
    *(sa.Column(f.name, agg.column_type(f.name), nullable=False) for f in (*agg.DIMENSIONS, *agg.MEASURES)),
    prefixes=["TEMPORARY"],
)


# --- locking -------------------------------------------------------------------------


@contextmanager
def exclusive(engine: Engine, *, wait: bool) -> Iterator[Connection | None]:
    """A transaction that holds the rollup's lock, or None when `wait` is false and
    someone else holds it."""
    with engine.connect() as conn, exclusive_on(conn, wait=wait) as got:
        yield got


@contextmanager
def exclusive_on(conn: Connection, *, wait: bool) -> Iterator[Connection | None]:
    """`exclusive` on a connection of the caller's (which keeps its temporary tables);
    it must have no transaction open."""
    if conn.dialect.name == "sqlite":
        # BEGIN IMMEDIATE (shared.db.write_connection): SQLite's write lock is the lock.
        conn = conn.execution_options(sqlite_begin_immediate=True)
        with conn.begin():
            yield conn
        return
    mysql_ = conn.dialect.name == "mysql"
    if mysql_:
        # GET_LOCK's timeout is in seconds; a year stands for "wait".
        got = conn.execute(MYSQL_LOCK, {"timeout": 365 * 86400 if wait else 0}).scalar() == 1
    elif wait:
        conn.execute(sa.select(sa.func.pg_advisory_lock(LOCK_KEY)))
        got = True
    else:
        got = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(LOCK_KEY))).scalar())
    conn.commit()
    if not got:
        yield None
        return
    try:
        if not mysql_:
            # One snapshot for the whole transaction, taken after the lock was granted.
            # (MySQL: READ COMMITTED, the engine's level; see the module's docstring.)
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn
    finally:
        try:
            if mysql_:
                # A copy left by a failed tick must never be read by the connection's next user.
                conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {LOG_COPY}")
                conn.execute(MYSQL_UNLOCK)
            else:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(LOCK_KEY)))
            conn.commit()
        except sa.exc.DBAPIError:
            # A dead connection holds no lock; make sure the pool drops it.
            conn.invalidate()


@contextmanager
def locked(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the rollup's lock, waiting for it."""
    with exclusive(engine, wait=True) as conn:
        assert conn is not None  # a waiting caller always gets the lock
        yield conn


# --- the shared query shapes ---------------------------------------------------------


def _insert(conn: Connection) -> Callable[[sa.Table], Any]:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _upsert(
    conn: Connection,
    table: sa.Table,
    columns: list[str],
    source: AnySelect,
    key: list[str],
    set_: Callable[[Any], dict[str, Any]],
    *,
    counted: bool = True,
) -> int:
    """INSERT INTO table (columns) source, where a row with the same key exists setting
    `set_(incoming)` on it instead (`incoming`: the incoming row's columns). Returns the
    rows inserted or updated (0 on MySQL unless `counted`)."""
    if conn.dialect.name == "mysql":
        # ON DUPLICATE KEY UPDATE may not refer to a grouped SELECT's columns: the source
        # is a derived table (also how MySQL 8 replaces the deprecated VALUES()).
        incoming = source.subquery("incoming")
        by_target = dict(zip(columns, incoming.c))  # by position, as INSERT ... SELECT maps them
        ins = mysql.insert(table).from_select(columns, sa.select(*incoming.c))
        conn.execute(ins.on_duplicate_key_update(set_(by_target)))
        if not counted:
            return 0
        # Its rowcount counts an updated row twice, so the source is counted again: it
        # runs the source a second time, which only a small one (a tick's) should pay.
        return int(conn.execute(sa.select(sa.func.count()).select_from(incoming)).scalar_one())
    return int(conn.execute(_upsert_statement(_insert(conn), table, columns, source, key, set_)).rowcount)


def _upsert_statement(
    insert: Callable[[sa.Table], Any],
    table: sa.Table,
    columns: list[str],
    source: AnySelect,
    key: list[str],
    set_: Callable[[Any], dict[str, Any]],
) -> Any:
    """`_upsert`'s statement on PostgreSQL and SQLite (`insert`: the dialect's)."""
    ins = insert(table).from_select(columns, source)
    return ins.on_conflict_do_update(index_elements=key, set_=set_(ins.excluded))


def _counted_rows(where: Any, tz: str, from_: Any = None) -> AnySelect:
    """One row per consume log matching `where`: its hour, its local day in `tz`, and
    the aggregation's dimensions, attributes and measures."""
    buckets = agg.grain_buckets(tz)
    return agg.log_rows(where, {g: buckets[g] for g in DELTA_GRAINS}, from_)


def _delta_select(rows: Any) -> AnySelect:
    """`rows` (a select or union of _counted_rows) grouped by hour, day and every
    dimension, in rollup_delta's column order."""
    r = rows.subquery("r")
    return agg.aggregate(r, [*DELTA_GRAINS, *agg.DIMENSION_NAMES], agg.MEASURE_NAMES)


def _fill_delta(conn: Connection, rows: Any) -> None:
    """rollup_delta := _delta_select(rows), for a tick: a few thousand rows (MySQL,
    SQLite; on PostgreSQL a tick keeps its delta in its one statement, _fold_statement).

    Created afresh each time, never emptied by DELETE: a temporary table lives as long as
    the pooled connection, and deleted rows stay in it (InnoDB never purges a temporary
    table; PostgreSQL's autovacuum skips them), so every scan of it would read all the
    rows of the connection's earlier ticks too, a cost growing with the history rolled up
    (the first rollup alone leaves a million, beyond a small InnoDB buffer pool)."""
    # MySQL: DROP TABLE (without TEMPORARY), like TRUNCATE, would commit the transaction.
    temporary = "TEMPORARY " if conn.dialect.name == "mysql" else ""
    conn.exec_driver_sql(f"DROP {temporary}TABLE IF EXISTS {delta.name}")
    conn.execute(CreateTable(delta))
    conn.execute(sa.insert(delta).from_select(list(delta.c.keys()), _delta_select(rows)))


class _CreateTempTableAs(sa.sql.expression.Executable, sa.sql.expression.ClauseElement):
    """CREATE TEMPORARY TABLE name AS select: unlike INSERT ... SELECT, PostgreSQL may run
    the select with parallel workers, which is what a re-aggregation of millions of logs
    wants."""

    inherit_cache = False

    def __init__(self, name: str, select: AnySelect):
        self.name, self.select = name, select


@compiles(_CreateTempTableAs)
def _compile_ctas(element: _CreateTempTableAs, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CREATE TEMPORARY TABLE {element.name} AS {compiler.process(element.select, **kw)}"


def _temp_table_as(conn: Connection, name: str, select: AnySelect) -> sa.TableClause:
    # MySQL: DROP TABLE (without TEMPORARY) would commit the transaction.
    temporary = "TEMPORARY " if conn.dialect.name == "mysql" else ""
    conn.exec_driver_sql(f"DROP {temporary}TABLE IF EXISTS {name}")
    conn.execute(_CreateTempTableAs(name, select))
    if conn.dialect.name == "postgresql":
        # Temporary tables get no statistics otherwise: the planner would take a 500,000-row
        # table for a small one and sort it on disk instead of hashing it. A small sample
        # is enough for that (the default would read every row of a one-day chunk).
        conn.exec_driver_sql("SET LOCAL default_statistics_target = 10")
        conn.exec_driver_sql(f"ANALYZE {name}")
        conn.exec_driver_sql("RESET default_statistics_target")
    return sa.table(name, *(sa.column(c.name) for c in select.selected_columns))


def _keyed_temp_table(
    conn: Connection, name: str, columns: Iterable[sa.Column[Any]], key: Iterable[str], select: AnySelect
) -> sa.Table:
    """MySQL: `select` (rows in the order of `columns`) into a temporary table with the
    types of `columns` and a primary key on `key`. MariaDB joins a table without an index
    row by row against every row of the other side (it has no hash join by default), so
    a join onto an unindexed temporary table costs the product of both sides; with the
    key, each probe is one index lookup. The types are the summary's own, so the key fits
    InnoDB's limit as the summary's does."""
    table = sa.Table(
        name,
        sa.MetaData(),
        *(sa.Column(c.name, c.type, nullable=False) for c in columns),
        sa.PrimaryKeyConstraint(*key),
        prefixes=["TEMPORARY"],
    )
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {name}")
    conn.execute(CreateTable(table))
    conn.execute(sa.insert(table).from_select([c.name for c in table.columns], select))
    return table


def _delete_at_keys(conn: Connection, target: sa.Table, keys: sa.TableClause, key: list[str], *where: Any) -> None:
    """DELETE the rows of `target` whose `key` is a row of `keys` (matching `where`).
    A join (DELETE ... USING), not `(key) IN (SELECT ...)`: MariaDB runs no semi-join in a
    single-table DELETE, so the IN form reads the whole target, probing `keys` per row;
    joined, it reads `keys` and looks each one up by the target's primary key. SQLite has
    no DELETE ... USING; its IN is planned as a lookup already."""
    if conn.dialect.name == "sqlite":
        picked = sa.select(*(keys.c[k] for k in key)).where(*where)
        conn.execute(sa.delete(target).where(sa.tuple_(*(target.c[k] for k in key)).in_(picked)))
        return
    conn.execute(sa.delete(target).where(*(target.c[k] == keys.c[k] for k in key), *where))


def _fold_upsert(summary: agg.Summary) -> tuple[sa.Table, list[str], list[str], Callable[[Any], dict[str, Any]]]:
    """The upsert that adds rows into the summary's table: the table, its columns (the
    rows come in that order), its key, and the merge of an incoming row (agg.merge_into)."""
    return summary.table, [c.name for c in summary.table.columns], list(summary.key), partial(agg.merge_into, summary)


def _fold(conn: Connection, summary: agg.Summary, source: AnySelect, *, counted: bool = True) -> int:
    """Add `source`'s rows (grouped, in the table's column order) into the summary's table.
    Returns the rows added or updated (see `_upsert` for `counted`)."""
    table, columns, key, merge = _fold_upsert(summary)
    return _upsert(conn, table, columns, source, key, merge, counted=counted)


def _has_rows(conn: Connection, table: sa.TableClause, *where: Any) -> bool:
    """Whether `table` (a temporary table of this transaction's) has a row matching `where`."""
    return conn.execute(sa.select(sa.literal(1)).select_from(table).where(*where).limit(1)).first() is not None


def _key_columns(summary: agg.Summary, source: Any) -> list[Any]:
    """`summary`'s key as columns of `source` (a delta-shaped table with a column per grain)."""
    bucket = summary.bucket(source.c.hour, source.c.day).label(agg.BUCKET)
    return [bucket if k == agg.BUCKET else source.c[k] for k in summary.key]


def _fold_sources(source: Any, summaries: Iterable[agg.Summary]) -> list[tuple[agg.Summary, AnySelect, bool]]:
    """Each summary table's rows from `source` (rollup_delta, or a CTE of its shape), in
    the table's column order and key order, and whether they were grouped."""
    every = set(agg.DIMENSION_NAMES)
    sources: list[tuple[agg.Summary, AnySelect, bool]] = []
    for summary in summaries:
        key = _key_columns(summary, source)
        if summary.cut_at_midnight and set(summary.dimensions) == every:
            # A table of every dimension, cut at local midnights, is keyed like rollup_delta:
            # a delta row's (hour, local day) is the piece of the hour inside the day, and
            # the row's bucket is that piece's start, so no two delta rows share its key.
            # Its rows are the delta's rows, with no GROUP BY (and, on MySQL, no second
            # run of one to count them).
            rows, grouped = sa.select(*key, *(source.c[v] for v in summary.values)), False
        else:
            rows, grouped = agg.aggregate(source, key, summary.values), True
        # In key order: the upsert walks the primary key left to right, not at random
        # (measured on dense data: unordered upserts into the detail table took 1.25x as long).
        sources.append((summary, rows.order_by(*map(agg.unlabel, key)), grouped))
    return sources


def _fold_delta(conn: Connection) -> int:
    """Fold rollup_delta into every summary table (MySQL, SQLite). Returns the rows of
    the first (the finest hourly one) touched."""
    touched: list[int] = []
    for summary, source, grouped in _fold_sources(delta, agg.SUMMARIES):
        if not grouped:
            _fold(conn, summary, source, counted=False)
            touched.append(int(conn.execute(sa.select(sa.func.count()).select_from(delta)).scalar_one()))
            continue
        # Only the finest table's rows are reported.
        touched.append(_fold(conn, summary, source, counted=not touched))
    return touched[0]


def _delta_logs(conn: Connection) -> int:
    """Consume logs in rollup_delta."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(delta.c[agg.LOG_COUNT]), 0))).scalar_one())


# --- state ---------------------------------------------------------------------------


def _state(conn: Connection, settings: Settings) -> sa.Row[Any]:
    state = conn.execute(sa.select(m.rollup_state).where(m.rollup_state.c.id == 1)).one_or_none()
    if state is None:
        raise RollupError("rollup_state is empty: run `usage-stats db upgrade` first")
    if state.timezone is None:
        conn.execute(sa.update(m.rollup_state).where(m.rollup_state.c.id == 1).values(timezone=settings.stats_timezone))
    elif state.timezone != settings.stats_timezone:
        if settings.retain_logs_days:
            # `reaggregate --all` keeps the daily rows older than the log horizon (their
            # logs may be gone), so with retention on it cannot switch zones: say what can.
            raise RollupError(
                f"daily rows were built in {state.timezone} but STATS_TIMEZONE is {settings.stats_timezone}, "
                f"and with RETAIN_LOGS_DAYS={settings.retain_logs_days} they cannot all be rebuilt: raw logs "
                f"older than that may be deleted already. Either set STATS_TIMEZONE back to {state.timezone}, "
                f"or stop the worker and run `usage-stats reaggregate --all` once with RETAIN_LOGS_DAYS unset, "
                f"accepting that days whose raw logs are gone lose their daily rows"
            )
        raise RollupError(
            f"daily rows were built in {state.timezone} but STATS_TIMEZONE is {settings.stats_timezone}: "
            f"run `usage-stats reaggregate --all` to rebuild them in {settings.stats_timezone}"
        )
    return state


@dataclass(frozen=True)
class Progress:
    """How far the rollup has got: every log with id <= last_log_id is counted, except
    those inside a gap ([lo, hi] ranges, all below last_log_id). Also where the hourly
    rows start: before `hours_kept_from` retention has dropped them, and compacted the
    hours cut at midnight into whole days (None: every hour is kept)."""

    last_log_id: int
    gaps: list[tuple[int, int]]
    hours_kept_from: int | None = None


def read_progress(conn: Connection) -> Progress:
    """rollup_state's last_log_id and hours_kept_from, and the rollup_gap ranges, read on
    `conn` (in its snapshot)."""
    s = m.rollup_state.c
    state = conn.execute(sa.select(s.last_log_id, s.hours_kept_from).where(s.id == 1)).first()
    g = m.rollup_gap.c
    gaps = [(int(lo), int(hi)) for lo, hi in conn.execute(sa.select(g.lo, g.hi).order_by(g.lo))]
    if state is None:
        return Progress(0, gaps)
    return Progress(int(state.last_log_id or 0), gaps, state.hours_kept_from)


# --- gaps (PostgreSQL and MySQL) ----------------------------------------------------


def keeps_gaps(dialect: str) -> bool:
    """Whether ids can commit out of order there (a server with concurrent writers)."""
    return dialect in ("postgresql", "mysql")


_RECORD_GAPS = sa.text("""
INSERT INTO rollup_gap (lo, hi, discovered_at)
SELECT prev + 1, id - 1, clock_timestamp()
FROM (SELECT id, lag(id, 1, CAST(:w AS BIGINT)) OVER (ORDER BY id) AS prev
      FROM logs WHERE id > :w AND id <= :h) AS seen
WHERE id - prev > 1
""")

# A gap is settled when no transaction that began before it was seen still holds a
# write-capable lock on logs. Unknown start times (another role's sessions without
# pg_read_all_stats; prepared transactions) count as "maybe": safe, only slower.
_SETTLE_GAPS = sa.text("""
UPDATE rollup_gap SET settled_at = clock_timestamp()
WHERE settled_at IS NULL AND NOT EXISTS (
    SELECT 1 FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.relation = CAST('logs' AS regclass)
      AND l.mode NOT IN ('AccessShareLock', 'ShareLock')
      AND l.pid IS DISTINCT FROM pg_backend_pid()
      AND (a.xact_start IS NULL OR a.xact_start <= rollup_gap.discovered_at))
""")


# MySQL: the tick's copy of the logs (LOG_COPY) holds every id it saw above the watermark.
# NOW(6) is the statement's start, after the copy was read.
_RECORD_GAPS_MYSQL = sa.text(f"""
INSERT INTO rollup_gap (lo, hi, discovered_at)
SELECT prev + 1, id - 1, NOW(6)
FROM (SELECT id, COALESCE(LAG(id) OVER (ORDER BY id), :w) AS prev
      FROM {LOG_COPY} WHERE id > :w AND id <= :h) AS seen
WHERE id - prev > 1
""")

# InnoDB: see the module's docstring. INNODB_TRX is a cache that InnoDB refreshes only
# once it has gone 0.1 s unread, so a tick reads it once, into TRX_COPY, and trusts that
# copy only if it lists the tick's own transaction: then it was taken after this
# transaction began, so after every gap an earlier tick recorded (the lock orders ticks).
# Gaps this tick records wait for the next tick. trx_started is in the session's time
# zone (UTC, shared.db), as discovered_at is.
TRX_COPY = "rollup_trx"
_COPY_INNODB_TRX = sa.text(f"""
CREATE TEMPORARY TABLE {TRX_COPY} AS
SELECT t.trx_mysql_thread_id AS thread, t.trx_started AS started
FROM information_schema.INNODB_TRX t
LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
WHERE t.trx_mysql_thread_id = CONNECTION_ID()
   OR ((t.trx_rows_modified > 0 OR t.trx_query IS NOT NULL) AND (p.DB IS NULL OR p.DB = DATABASE()))
""")
_SETTLE_GAPS_MYSQL = sa.text(f"""
UPDATE rollup_gap SET settled_at = NOW(6)
WHERE settled_at IS NULL AND :complete
  AND EXISTS (SELECT 1 FROM {TRX_COPY} me WHERE me.thread = CONNECTION_ID())
  AND NOT EXISTS (
    SELECT 1 FROM {TRX_COPY} t
    WHERE t.thread <> CONNECTION_ID() AND t.started <= rollup_gap.discovered_at)
""")


def _settle_gaps_mysql(conn: Connection) -> None:
    """Settle the gaps of earlier ticks whose writers are all gone, if INNODB_TRX's cache
    is known to be fresh (see TRX_COPY); otherwise leave them to a later tick."""
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {TRX_COPY}")
    conn.execute(_COPY_INNODB_TRX)
    # InnoDB leaves transactions out when the cache reaches its memory limit, and warns.
    truncated = any("truncated" in str(w[2]).lower() for w in conn.exec_driver_sql("SHOW WARNINGS"))
    # The same statements every time, fresh or not (the fault tests kill a tick at each).
    conn.execute(_SETTLE_GAPS_MYSQL, {"complete": not truncated})
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {TRX_COPY}")


def check_innodb(conn: Connection) -> None:
    """Refuse what breaks the gap rule on MySQL (see the module's docstring), saying how
    to fix it."""
    table = conn.execute(
        sa.text(
            "SELECT t.ENGINE, c.EXTRA FROM information_schema.TABLES t JOIN information_schema.COLUMNS c "
            "ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME AND c.COLUMN_NAME = 'id' "
            "WHERE t.TABLE_SCHEMA = DATABASE() AND t.TABLE_NAME = 'logs'"
        )
    ).first()
    if table is None:
        raise RollupError("there is no logs table with an id column: run `usage-stats db upgrade` first")
    engine_name, extra = table
    if str(engine_name).lower() != "innodb":
        raise RollupError(
            f"the logs table uses the {engine_name} storage engine: the rollup counts logs exactly once on "
            f"InnoDB only; run `ALTER TABLE logs ENGINE=InnoDB`"
        )
    if "auto_increment" not in str(extra).lower():
        raise RollupError("logs.id is not AUTO_INCREMENT: the rollup follows logs by their increasing ids")
    increment, log_bin, binlog_format = conn.execute(
        sa.text("SELECT @@GLOBAL.auto_increment_increment, @@GLOBAL.log_bin, @@GLOBAL.binlog_format")
    ).one()
    if int(increment) > 1:
        raise RollupError(
            f"auto_increment_increment is {increment}: several primaries (or a Galera cluster) then hand out "
            f"interleaved ids whose transactions this server cannot see, and a late log could be missed; "
            f"write logs on one primary with `SET GLOBAL auto_increment_increment = 1`"
        )
    if int(log_bin or 0) and str(binlog_format).upper() == "STATEMENT":
        raise RollupError(
            "binlog_format is STATEMENT: the rollup writes in READ COMMITTED, which InnoDB refuses to log "
            "as statements; run `SET GLOBAL binlog_format = 'ROW'` (or MIXED)"
        )
    try:
        conn.execute(sa.text("SELECT COUNT(*) FROM information_schema.INNODB_TRX"))
    except sa.exc.DBAPIError as exc:
        raise RollupError(
            "cannot read information_schema.INNODB_TRX, the only way to know when a late log can no longer "
            "commit: grant the PROCESS privilege to the user usage-stats connects as "
            f"(`GRANT PROCESS ON *.* TO <user>@<host>`): {str(exc.orig).splitlines()[0]}"
        ) from exc


_LOG_SEQUENCE_CACHE = sa.text("""
SELECT pg_get_serial_sequence('logs', 'id') AS name, s.seqcache AS cache
FROM pg_sequence s WHERE s.seqrelid = CAST(pg_get_serial_sequence('logs', 'id') AS regclass)
""")


def check_log_sequence(conn: Connection) -> None:
    """Refuse a logs id sequence with CACHE > 1: each session then hands out ids from its
    own block, out of order with other sessions, and an id below one already counted may
    arrive after its gap was forgotten (it would never be counted)."""
    row = conn.execute(_LOG_SEQUENCE_CACHE).first()
    if row is not None and row.cache > 1:
        raise RollupError(
            f"the logs id sequence {row.name} has CACHE {row.cache}: ids are then handed out out of "
            f"order and a late log could be missed; run `ALTER SEQUENCE {row.name} CACHE 1`"
        )


_LOG_SEQUENCE_LAST = {
    # NULL when the sequence was reset and has not handed out an id since.
    "postgresql": "SELECT pg_sequence_last_value(CAST(pg_get_serial_sequence('logs', 'id') AS regclass)), "
    "pg_get_serial_sequence('logs', 'id') IS NOT NULL",
    "sqlite": "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'logs'), "
    "EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'logs')",
    # The next id, less one. (MySQL 8 caches these figures: see _check_ids_not_restarted.)
    "mysql": "SELECT AUTO_INCREMENT - 1, AUTO_INCREMENT IS NOT NULL FROM information_schema.TABLES "
    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'logs'",
}


def _check_ids_not_restarted(conn: Connection, w: int) -> None:
    """No id above the watermark: fine, unless ids will now be handed out below it (the
    logs table recreated or its sequence reset, as after TRUNCATE ... RESTART IDENTITY or a
    restored database): those logs would go uncounted, so stop and say so. Asked of the
    id sequence, so deleting the newest logs is not mistaken for a restart."""
    if conn.dialect.name == "mysql" and not getattr(conn.dialect, "is_mariadb", False):
        conn.exec_driver_sql("SET SESSION information_schema_stats_expiry = 0")
    try:
        last, has_sequence = conn.exec_driver_sql(_LOG_SEQUENCE_LAST[conn.dialect.name]).one()
    except (KeyError, sa.exc.DBAPIError):
        last, has_sequence = None, False  # no sqlite_sequence table: no AUTOINCREMENT anywhere
    if has_sequence:
        if last is None or last < w:
            raise RollupError(
                f"the logs id sequence starts again below the rollup's last_log_id {w} (it is at {last or 0}): "
                f"the logs table was recreated or its sequence reset. If the logs up to id {w} are gone for good, "
                f"run `UPDATE rollup_state SET last_log_id = 0` so the new logs are counted"
            )
        return
    # Without a sequence (SQLite rowids) a new id is max(id) + 1.
    top = conn.execute(sa.select(sa.func.max(m.logs.c.id))).scalar() or 0
    if top < w:
        raise RollupError(
            f"the highest log id is {top}, below the rollup's last_log_id {w}, and new logs will reuse ids up to "
            f"{w}: if the logs table was recreated, run `UPDATE rollup_state SET last_log_id = 0`; if only its "
            f"newest logs were deleted, run `UPDATE rollup_state SET last_log_id = {top}`"
        )


def _gap_join() -> sa.Join:
    g = m.rollup_gap.c
    return m.logs.join(m.rollup_gap, m.logs.c.id.between(g.lo, g.hi))


def _same(statement: Any) -> Any:
    return statement


# The columns of logs a tick reads: the id, and those the aggregation reads.
_COPIED = ["id"] + sorted(
    {
        e.name
        for e in visitors.iterate(agg.log_rows(sa.true(), agg.grain_buckets("UTC")))
        if isinstance(e, sa.Column) and e.table is m.logs
    }
    - {"id"}
)
_log_copy = sa.table(LOG_COPY, *(sa.column(n, m.logs.c[n].type) for n in _COPIED))


def _on_copy(statement: Any) -> Any:
    """`statement` reading the tick's copy of the logs instead of logs (MySQL)."""

    def replace(element: Any, **kw: Any) -> Any:
        if element is m.logs:
            return _log_copy
        if isinstance(element, sa.Column) and element.table is m.logs:
            return _log_copy.c[element.name]
        return None

    opts: dict[str, Any] = {}
    return visitors.replacement_traverse(statement, opts, replace)


def _copy_logs(conn: Connection, w: int, batch_size: int, with_gaps: bool) -> None:
    """MySQL: copy the next `batch_size` logs above `w`, and those inside gaps, into
    LOG_COPY in one statement: one consistent view of them, read without locks (READ
    COMMITTED), from which the whole tick is computed."""
    lg = m.logs.c
    columns = [lg[n] for n in _COPIED]
    parts: list[Any] = [sa.select(*columns).where(lg.id > w).order_by(lg.id).limit(batch_size)]
    if with_gaps:
        parts.append(sa.select(*columns).select_from(_gap_join()))
    select: Any = parts[0] if len(parts) == 1 else sa.union_all(*parts)
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {LOG_COPY}")
    conn.execute(_CreateTempTableAs(f"{LOG_COPY} (PRIMARY KEY (id))", select))


def _split_gaps_around_found(conn: Connection, view: Callable[[Any], Any] = _same) -> None:
    """Ids that committed inside a gap were just counted: cut them out of their gap.
    `view`: how the tick reads logs (the copy, on MySQL)."""
    g = m.rollup_gap.c
    found = conn.execute(
        view(
            sa.select(g.lo, g.hi, g.discovered_at, g.settled_at, m.logs.c.id)
            .select_from(_gap_join())
            .order_by(g.lo, m.logs.c.id)
        )
    ).all()
    by_gap: dict[tuple[Any, ...], list[int]] = {}
    for lo, hi, discovered, settled, log_id in found:
        by_gap.setdefault((lo, hi, discovered, settled), []).append(log_id)
    for (lo, hi, discovered, settled), ids in by_gap.items():
        conn.execute(sa.delete(m.rollup_gap).where(g.lo == lo))
        pieces, start = [], lo
        for log_id in ids:
            if log_id > start:
                pieces.append((start, log_id - 1))
            start = log_id + 1
        if start <= hi:
            pieces.append((start, hi))
        if pieces:
            conn.execute(
                sa.insert(m.rollup_gap),
                [{"lo": a, "hi": b, "discovered_at": discovered, "settled_at": settled} for a, b in pieces],
            )


def _not_in_gap() -> Any:
    g = m.rollup_gap.c
    return ~sa.exists().where(m.logs.c.id.between(g.lo, g.hi))


def _tick_rows(tz: str, w: Any, h: Any, gaps: bool, view: Callable[[Any], Any] = _same) -> Any:
    """What a tick counts, one row per log (_counted_rows): the logs with ids in (w, h]
    (none if h is None), and with `gaps`, those committed inside a gap. `view`: how the
    tick reads logs (the copy, on MySQL)."""
    sources = []
    if h is not None:
        sources.append(view(_counted_rows(sa.and_(m.logs.c.id > w, m.logs.c.id <= h), tz)))
    if gaps:
        sources.append(view(_counted_rows(sa.true(), tz, from_=_gap_join())))
    return sources[0] if len(sources) == 1 else sa.union_all(*sources)


@lru_cache(maxsize=32)
def _fold_statement(tz: str, new: bool, gaps: bool, summaries: tuple[agg.Summary, ...]) -> Any:
    """PostgreSQL: a tick's delta and every summary table's upsert in one statement,
    `WITH rollup_delta AS (_delta_select(_tick_rows)), fold_<table> AS (INSERT ... ON
    CONFLICT DO UPDATE ...), ... SELECT logs, rows`, for bind parameters w and h: the
    delta is aggregated once and kept in memory for the statement (a CTE read by several
    others is materialized once), with no temporary table created and dropped per tick
    (catalog rows written and left dead every minute) and no round trip per table. The
    data-modifying CTEs run to completion whether or not the main query reads them; each
    writes its own table, so none needs another's effects, which it could not see. It
    returns the consume logs counted and the rows of the first (the finest) summary
    table touched. Built once per zone and case (`summaries`, agg.SUMMARIES, is part of
    the key: a benchmark swaps them): building it costs milliseconds of Python."""
    bound = {n: sa.bindparam(n, type_=sa.BigInteger) for n in ("w", "h")}
    d = _delta_select(_tick_rows(tz, bound["w"], bound["h"] if new else None, gaps)).cte(delta.name)
    folds: list[Any] = []
    for summary, source, _ in _fold_sources(d, summaries):
        table, columns, key, merge = _fold_upsert(summary)
        upsert = _upsert_statement(postgresql.insert, table, columns, source, key, merge)
        if not folds:
            upsert = upsert.returning(sa.literal(1))  # counted below: the finest table's rows
        folds.append(upsert.cte(f"fold_{summary.table.name}"))
    touched = sa.select(sa.func.count()).select_from(folds[0]).scalar_subquery()
    return sa.select(sa.func.coalesce(sa.func.sum(d.c[agg.LOG_COUNT]), 0), touched).add_cte(*folds[1:])


# --- the tick ------------------------------------------------------------------------


def tick(engine: Engine, settings: Settings, *, wait: bool = False) -> TickResult:
    """One transaction: count up to `rollup_batch_size` new log ids, plus whatever
    committed inside known gaps."""
    started = time.perf_counter()
    pg = engine.dialect.name == "postgresql"
    my = engine.dialect.name == "mysql"
    gaps_kept = keeps_gaps(engine.dialect.name)
    with exclusive(engine, wait=wait) as conn:
        if conn is None:
            return TickResult(skipped=True)
        if pg:
            # The tick's commit need not wait for its WAL to reach the disk (this
            # transaction only). A crash may then lose a tick that had committed, but only
            # whole (its rows, gaps and watermark are one transaction), and only if no later
            # commit reached the disk: WAL is replayed as a prefix, so a commit that waits
            # (a gateway's, a re-aggregation chunk's) makes this one durable too. The next
            # tick then counts the same logs: they were durable before this tick could read
            # them (a synchronous commit is visible only once flushed; a log the gateway
            # committed asynchronously lies before ours in the WAL, lost or kept with it).
            # An answer's version (shared.answer_version: watermark, gaps, generation)
            # seen before the crash may go back to the one before the tick, then forward:
            # to the same value only with the same rows (the same watermark over the same
            # logs, the same gaps), so no ETag or cached answer is wrong. It saves the
            # wait for the flush of the tick's megabytes of WAL at every commit.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        state = _state(conn, settings)
        if pg:
            check_log_sequence(conn)
        if my:
            check_innodb(conn)
        w = state.last_log_id
        has_gaps = gaps_kept and conn.execute(sa.select(sa.func.count()).select_from(m.rollup_gap)).scalar_one() > 0
        # How this tick reads logs: on MySQL, from one copy of them (see the docstring).
        view = _on_copy if my else _same
        if my:
            _copy_logs(conn, w, settings.rollup_batch_size, has_gaps)
        batch = view(
            sa.select(m.logs.c.id)
            .where(m.logs.c.id > w)
            .order_by(m.logs.c.id)
            .limit(settings.rollup_batch_size)
            .subquery()
        )
        h, n_ids = conn.execute(sa.select(sa.func.max(batch.c.id), sa.func.count(batch.c.id))).one()
        if h is None and w > 0:
            _check_ids_not_restarted(conn, w)

        result = TickResult(batches=1, last_log_id=h if h is not None else w, more=n_ids >= settings.rollup_batch_size)
        if h is not None or has_gaps:
            if pg:
                statement = _fold_statement(settings.stats_timezone, h is not None, has_gaps, agg.SUMMARIES)
                logs, buckets = conn.execute(statement, {"w": w, "h": h}).one()
                result.logs, result.buckets = int(logs), int(buckets)
            else:
                _fill_delta(conn, _tick_rows(settings.stats_timezone, w, h, has_gaps, view))
                result.logs = _delta_logs(conn)
                result.buckets = _fold_delta(conn)
        if gaps_kept:
            if has_gaps:
                _split_gaps_around_found(conn, view)
                # Settled in an earlier transaction, before this snapshot: what committed
                # in them was counted just now, nothing more can arrive.
                conn.execute(sa.delete(m.rollup_gap).where(m.rollup_gap.c.settled_at.is_not(None)))
            if my:
                _settle_gaps_mysql(conn)
            # Every id of (w, h] seen (n_ids of them, all distinct): no gap to record.
            recorded = h is not None and n_ids < h - w
            if recorded:
                conn.execute(_RECORD_GAPS_MYSQL if my else _RECORD_GAPS, {"w": w, "h": h})
            if not my and (has_gaps or recorded):
                conn.execute(_SETTLE_GAPS)
        if my:
            conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {LOG_COPY}")
        result.seconds = time.perf_counter() - started
        conn.execute(
            sa.update(m.rollup_state)
            .where(m.rollup_state.c.id == 1)
            .values(
                last_log_id=result.last_log_id,
                last_tick_at=time.time(),
                last_tick_seconds=result.seconds,
                last_tick_logs=result.logs,
            )
        )
    return result


def rollup(engine: Engine, settings: Settings, *, max_seconds: float | None = None, wait: bool = False) -> TickResult:
    """Tick until caught up (or `max_seconds` pass), one transaction per batch; logs one
    line for the whole run."""
    started = time.perf_counter()
    total = TickResult()
    while True:
        one = tick(engine, settings, wait=wait)
        if one.skipped:
            total.skipped = total.batches == 0
            break
        total.batches += 1
        total.logs += one.logs
        total.buckets += one.buckets
        total.last_log_id = one.last_log_id
        if not one.more or (max_seconds is not None and time.perf_counter() - started > max_seconds):
            break
    total.seconds = time.perf_counter() - started
    total.logs_behind, total.lag_seconds = backlog(engine)
    if total.skipped:
        log.info("rollup tick skipped: another tick or re-aggregation holds the lock")
    else:
        log.info(
            "rollup tick: logs=%d buckets=%d batches=%d duration=%.3fs lag=%ds behind=%d last_log_id=%d",
            total.logs,
            total.buckets,
            total.batches,
            total.seconds,
            total.lag_seconds,
            total.logs_behind,
            total.last_log_id,
        )
    return total


def backlog(engine: Engine, cap: int = 1_000_000) -> tuple[int, int]:
    """(logs not yet rolled up, up to `cap`; seconds since the oldest of them was created)."""
    lg = m.logs.c
    with engine.connect() as conn:
        w = conn.execute(sa.select(m.rollup_state.c.last_log_id).where(m.rollup_state.c.id == 1)).scalar() or 0
        pending = sa.select(lg.id).where(lg.id > w).limit(cap).subquery()
        behind = conn.execute(sa.select(sa.func.count()).select_from(pending)).scalar_one()
        oldest = conn.execute(sa.select(lg.created_at).where(lg.id > w).order_by(lg.id).limit(1)).scalar()
    lag = max(0, int(time.time()) - oldest) if oldest is not None else 0
    return behind, lag


# --- re-aggregation ------------------------------------------------------------------


def adopt_timezone(engine: Engine, settings: Settings) -> bool:
    """When the daily rows were built in another zone than STATS_TIMEZONE: drop them all
    and record the new zone, so that ticks go on and a re-aggregation of the whole history
    (`usage-stats reaggregate --all`) rebuilds them. True when something changed."""
    with locked(engine) as conn:
        current = conn.execute(sa.select(m.rollup_state.c.timezone).where(m.rollup_state.c.id == 1)).scalar()
        if current in (None, settings.stats_timezone):
            return False
        lg, s = m.logs.c, m.rollup_state.c
        lo, hi = conn.execute(sa.select(sa.func.min(lg.created_at), sa.func.max(lg.created_at))).one()
        compacted = conn.execute(sa.select(s.hours_kept_from).where(s.id == 1)).scalar() is not None
        # Hours cut at midnight are the plain hours wherever neither zone's midnight falls
        # inside one, and retention compacted none into the old zone's days: then they
        # stay, and the new zone's days are summed from them at once. Otherwise they go
        # too, and `reaggregate --all` rebuilds everything from the logs.
        cut = compacted or (
            lo is not None and any(first_split_hour(tz, lo, hi + 1) for tz in (current, settings.stats_timezone))
        )
        for summary in agg.SUMMARIES:
            if summary.grain == "day" or (summary.cut_at_midnight and cut):
                conn.execute(sa.delete(summary.table))
        if cut:
            conn.execute(sa.update(m.rollup_state).where(s.id == 1).values(hours_kept_from=None))
        else:
            for summary in agg.SUMMARIES:
                if summary.grain == "day":
                    _derive_all(conn, summary, settings.stats_timezone)
        conn.execute(sa.update(m.rollup_state).where(m.rollup_state.c.id == 1).values(timezone=settings.stats_timezone))
        bump_generation(conn)
    log.info("daily rows dropped: built in %s, STATS_TIMEZONE is now %s", current, settings.stats_timezone)
    return True


def history_bounds(engine: Engine) -> tuple[int, int] | None:
    """[first, last + 1) of the logs' created_at (both ends from idx_created_at_id)."""
    lg = m.logs.c
    with engine.connect() as conn:
        lo, hi = conn.execute(sa.select(sa.func.min(lg.created_at), sa.func.max(lg.created_at))).one()
    return None if lo is None else (lo, hi + 1)


def day_starts(start: int, end: int, tz: str) -> list[int]:
    """Local midnights of every day that [start, end) touches, plus the end of the last."""
    days = [local_midnight(start, tz)]
    while days[-1] < end:
        days.append(next_local_midnight(days[-1], tz))
    return days


def day_chunks(start: int, end: int, settings: Settings) -> tuple[list[int], list[tuple[int, int]]]:
    """The local midnights of the days [start, end) touches (`day_starts`), and the
    chunks of REAGGREGATE_CHUNK_DAYS days a re-aggregation of them runs, as [lo, hi)."""
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    days = day_starts(start, end, settings.stats_timezone)
    step = settings.reaggregate_chunk_days
    return days, [(days[i], days[min(i + step, len(days) - 1)]) for i in range(0, len(days) - 1, step)]


def reaggregate(
    engine: Engine,
    settings: Settings,
    start: int,
    end: int,
    user_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    check_every_table: bool = False,
) -> ReaggregateResult:
    """Recompute every hourly and daily bucket of the local days touching [start, end)
    from the raw logs and replace them; for one user when `user_id` is given.

    Idempotent, one transaction per `reaggregate_chunk_days` days, safe beside ticks and
    writers. The hour rows of every hour overlapping those days are replaced too.

    The finest table is compared with the logs, the others are summed again from it
    where it changed (they are written with it in every transaction, so they agree
    with it). `check_every_table`: compare every table with the logs instead, for
    tables that cannot agree with the finest yet (a new, empty one: shared.ops)."""
    started = time.perf_counter()
    days, bounds = day_chunks(start, end, settings)
    result = ReaggregateResult(start=days[0], end=days[-1], days=days)
    for done, (lo, hi) in enumerate(bounds, 1):
        result.logs += _reaggregate_days(engine, settings, lo, hi, user_id, check_every_table)
        result.chunks = done
        if progress:
            progress(done, len(bounds))
    result.seconds = time.perf_counter() - started
    log.info(
        "reaggregate [%d, %d) user=%s: chunks=%d logs=%d duration=%.3fs",
        result.start,
        result.end,
        user_id,
        result.chunks,
        result.logs,
        result.seconds,
    )
    return result


def _reaggregate_days(
    engine: Engine,
    settings: Settings,
    d_lo: int,
    d_hi: int,
    user_id: int | None,
    check_every_table: bool = False,
    on_write: Callable[[Connection, int, bool], None] | None = None,
    concurrent_bumps: Callable[[Connection, int, int], int] | None = None,
) -> int:
    """Re-aggregate the days [d_lo, d_hi); returns their consume logs.

    `on_write(conn, logs, wrote)` runs in the write's transaction (shared.chunks marks
    the chunk done there; `wrote`: rows changed, and rollup_state.generation moved by one).
    `concurrent_bumps(conn, g0, g1)`: how many of the generation's moves in (g0, g1] were
    made by writes known to leave these days alone (the other chunks of a shared job);
    without it, none."""
    # Hours are UTC-aligned, days local: rebuild every hour that overlaps the days, from
    # all its logs (in a half-hour zone the first and last hours straddle into the
    # neighbouring days; rebuilding such an hour twice, once per chunk, is harmless).
    h_lo, h_hi = d_lo - d_lo % HOUR, -(-d_hi // HOUR) * HOUR
    lg = m.logs.c
    in_range = sa.and_(lg.created_at >= h_lo, lg.created_at < h_hi)
    if user_id is not None:
        in_range = sa.and_(in_range, lg.user_id == user_id)
    tz = settings.stats_timezone
    finest = agg.SUMMARIES[0]
    derives = not check_every_table and _derives_the_others(finest)
    with engine.connect() as conn:
        # 1. Without the lock (ticks and other chunks go on), in one snapshot: the logs
        # counted at one moment of the rollup's progress, aggregated, and compared with
        # the finest table's rows -- the long part of the work.
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        change: sa.TableClause | None = None
        with conn.begin():
            _tune_for_aggregation(conn)
            then = _progress_then(conn)
            counted = sa.and_(in_range, lg.id <= then.last_log_id)
            if then.gaps:
                counted = sa.and_(counted, ~sa.exists().where(_in_gap_then()))
            fresh = _temp_table_as(conn, "rollup_fresh", _delta_select(_counted_rows(counted, tz)))
            if derives:
                rows, stored = _finest_rows(fresh, settings, d_lo, d_hi, h_lo, h_hi, user_id, regroup=False)
                change = _compare(conn, finest, rows, stored)
                # MySQL reads each statement in a view of its own (READ COMMITTED): the
                # stored rows compared are those of `then` only if nothing moved meanwhile.
                if conn.dialect.name == "mysql" and _progress_then(conn, copy=False) != then:
                    change = None
        # 2. Under the lock: the logs of these days counted since (a tick's few, if any),
        # then the write.
        with exclusive_on(conn, wait=True) as locked_conn:
            assert locked_conn is not None  # a waiting caller always gets the lock
            conn = locked_conn
            state = _state(conn, settings)
            now = int(state.last_log_id)
            since = None
            if now != then.last_log_id or then.gaps:
                _tune_for_aggregation(conn)
                newer = lg.id > then.last_log_id
                since = sa.and_(
                    in_range,
                    lg.id <= now,
                    sa.or_(newer, sa.exists().where(_in_gap_then())) if then.gaps else newer,
                )
                if keeps_gaps(engine.dialect.name):
                    since = sa.and_(since, _not_in_gap())
            moved = int(state.generation) - then.generation
            if change is not None and moved == (
                concurrent_bumps(conn, then.generation, state.generation) if moved and concurrent_bumps else 0
            ):
                # Only ticks wrote these days since `then`: the stored rows moved by
                # exactly the late logs, as the fresh rows must, so the change compared
                # then still holds, its values moved by the late logs (`_add_late`).
                logs = _fresh_logs(conn, fresh, d_lo, d_hi)
                if since is not None:
                    logs += _add_late(conn, finest, change, since, tz, d_lo, d_hi)
                wrote = _write_change(conn, finest, change)
                for summary in agg.SUMMARIES[1:]:
                    _rederive(conn, summary, change, tz, h_lo, h_hi)
            else:
                late = 0
                if since is not None:
                    late = conn.execute(
                        sa.insert(fresh).from_select(
                            [c.name for c in fresh.columns], _delta_select(_counted_rows(since, tz))
                        )
                    ).rowcount
                logs, wrote = _replace_days(
                    conn, settings, fresh, d_lo, d_hi, h_lo, h_hi, user_id, check_every_table, late > 0
                )
            if wrote:
                # Answers' version moves with the rows (shared.answer_version): once per write.
                bump_generation(conn)
            if on_write is not None:
                on_write(conn, logs, wrote)
            return logs


GAPS_THEN = "rollup_gap_then"


@dataclass(frozen=True)
class _Then:
    """The rollup's progress when a chunk began (its gaps copied into GAPS_THEN), and the
    generation of the summary rows then (shared.answer_version)."""

    last_log_id: int
    gaps: tuple[tuple[int, int], ...]
    generation: int


def _progress_then(conn: Connection, *, copy: bool = True) -> _Then:
    """The rollup's progress now, in the caller's transaction, its gaps also copied into
    GAPS_THEN (`copy`). last_log_id is read before the gaps: a tick committing in between
    can only have closed some of them (ids it counted, or that will never commit) and
    opened new ones above that watermark, so the logs counted by (last_log_id, gaps) are
    counted at both moments."""
    s = m.rollup_state.c
    state = conn.execute(sa.select(s.last_log_id, s.generation).where(s.id == 1)).one_or_none()
    if state is None:
        raise RollupError("rollup_state is empty: run `usage-stats db upgrade` first")
    g = m.rollup_gap.c
    if copy:
        gaps = _temp_table_as(conn, GAPS_THEN, sa.select(g.lo, g.hi)).c
        found = conn.execute(sa.select(gaps.lo, gaps.hi).order_by(gaps.lo)).all()
    else:
        found = conn.execute(sa.select(g.lo, g.hi).order_by(g.lo)).all()
    return _Then(int(state.last_log_id), tuple((lo, hi) for lo, hi in found), int(state.generation))


def _derives_the_others(finest: agg.Summary) -> bool:
    """Whether every other table can be summed from `finest`: it holds every dimension,
    in hours that lie inside local days."""
    return finest.cut_at_midnight and set(finest.dimensions) == set(agg.DIMENSION_NAMES)


def _finest_rows(
    fresh: sa.TableClause,
    settings: Settings,
    d_lo: int,
    d_hi: int,
    h_lo: int,
    h_hi: int,
    user_id: int | None,
    *,
    regroup: bool,
) -> tuple[AnySelect, Any]:
    """The finest table's rows of the hours [h_lo, h_hi) from rollup_fresh, and the
    condition picking the stored rows they replace. rollup_fresh is keyed by (hour, day,
    dimensions). Where every local midnight falls on a UTC hour (all zones but a few
    half-hour ones), an hour lies in one day, so its rows are unique by (hour,
    dimensions) already: the finest table takes them as they are, without a second
    GROUP BY over hundreds of thousands of rows (unless `regroup`: late logs were added
    to rollup_fresh)."""
    finest = agg.SUMMARIES[0]
    f = fresh.c
    key = _key_columns(finest, fresh)
    in_range = sa.and_(f.hour >= h_lo, f.hour < h_hi)
    hours_in_one_day = not regroup and all(
        d % HOUR == 0 for d in (d_lo, d_hi, *day_starts(d_lo, d_hi, settings.stats_timezone))
    )
    if hours_in_one_day:
        rows = sa.select(*key, *(f[v] for v in finest.values)).where(in_range)
    else:
        rows = agg.aggregate(fresh, key, finest.values).where(in_range)
    t = finest.table.c
    stored = sa.and_(t[agg.BUCKET] >= h_lo, t[agg.BUCKET] < h_hi)
    if user_id is not None:
        stored = sa.and_(stored, t.user_id == user_id)
    return rows, stored


def _add_late(
    conn: Connection, finest: agg.Summary, change: sa.TableClause, since: Any, tz: str, d_lo: int, d_hi: int
) -> int:
    """Move the change compared before the lock by the logs counted since (`since`):
    where a key changed, its new and old values both gain the late logs' sums (the
    ticks added them to the stored row; the fresh row must hold them too), and a row the
    logs had lost comes back with the late logs alone. Keys that did not change need
    nothing: fresh and stored moved alike. Returns the late logs of the days [d_lo, d_hi)."""
    delta_rows = _delta_select(_counted_rows(since, tz)).subquery("d")
    key = _key_columns(finest, delta_rows)
    late = _temp_table_as(conn, "rollup_late", agg.aggregate(delta_rows, key, finest.values))
    c, lt = change.c, late.c
    # A finest row's bucket lies inside its local day (its hours are cut at midnight), so
    # the late rows of the days [d_lo, d_hi) are those whose bucket is in that range.
    in_days = sa.and_(lt[agg.BUCKET] >= d_lo, lt[agg.BUCKET] < d_hi)
    n_logs = int(
        conn.execute(sa.select(sa.func.coalesce(sa.func.sum(lt[agg.LOG_COUNT]), 0)).where(in_days)).scalar_one()
    )
    values: dict[str, Any] = {"present": sa.true()}
    for v in agg.MEASURE_NAMES:
        values[f"new_{v}"] = c[f"new_{v}"] + lt[v]
        values[f"old_{v}"] = c[f"old_{v}"] + lt[v]
    for a in finest.attributes:
        values[a] = sa.case((sa.and_(c.present, c[a] > lt[a]), c[a]), else_=lt[a])
    conn.execute(sa.update(change).where(*(c[k] == lt[k] for k in finest.key)).values(values))
    return n_logs


def _in_gap_then() -> Any:
    g = sa.table(GAPS_THEN, sa.column("lo"), sa.column("hi")).c
    return m.logs.c.id.between(g.lo, g.hi)


def _tune_for_aggregation(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        # JIT compiling these few statements costs more than it saves.
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
        # A day's aggregation by every dimension: the planner overestimates its groups
        # (286k estimated, 104k real for a day of the dense 10M data), finds the hash table
        # too big for work_mem x 2 and sorts on nine keys instead, in parallel workers
        # that then compete with other chunks' for the cores: about 1.45x the CPU of
        # hashing. With room for the estimate (256 MB; a hash aggregate spills to disk
        # beyond it, so memory stays bounded) it hashes in one process.
        conn.exec_driver_sql("SET LOCAL hash_mem_multiplier = 4")


def _replace_days(
    conn: Connection,
    settings: Settings,
    fresh: sa.TableClause,
    d_lo: int,
    d_hi: int,
    h_lo: int,
    h_hi: int,
    user_id: int | None,
    check_every_table: bool,
    regroup: bool,
) -> tuple[int, bool]:
    """Make the summary rows of the days [d_lo, d_hi) (hours [h_lo, h_hi)) equal
    rollup_fresh. `regroup`: rollup_fresh may hold a key more than once (late logs were
    added to it). Returns the days' consume logs, and whether any row was written."""
    f = fresh.c
    finest = agg.SUMMARIES[0]
    if not check_every_table and _derives_the_others(finest):
        # The finest table against the logs; every other table, at the keys that
        # changed, summed again from the finest (see `_rederive`).
        rows, stored = _finest_rows(fresh, settings, d_lo, d_hi, h_lo, h_hi, user_id, regroup=regroup)
        change = _compare(conn, finest, rows, stored)
        wrote = _write_change(conn, finest, change)
        for summary in agg.SUMMARIES[1:]:
            _rederive(conn, summary, change, settings.stats_timezone, h_lo, h_hi)
        return _fresh_logs(conn, fresh, d_lo, d_hi), wrote
    hours_in_one_day = not regroup and all(
        d % HOUR == 0 for d in (d_lo, d_hi, *day_starts(d_lo, d_hi, settings.stats_timezone))
    )
    all_dimensions = set(agg.DIMENSION_NAMES)
    ranges = {"hour": (h_lo, h_hi), "day": (d_lo, d_hi)}
    # Per grain, the last table synced and its change (rollup_change holds only the
    # latest compare's): the tables without users are moved by it.
    synced: dict[str, tuple[agg.Summary, sa.TableClause]] = {}
    wrote = False
    for summary in agg.SUMMARIES:
        lo, hi = ranges[summary.grain]
        target = summary.table
        in_range = sa.and_(f[summary.grain] >= lo, f[summary.grain] < hi)
        key = _key_columns(summary, fresh)
        if summary.grain == "hour" and hours_in_one_day and set(summary.dimensions) == all_dimensions:
            rows = sa.select(*key, *(f[v] for v in summary.values)).where(in_range)
        else:
            rows = agg.aggregate(fresh, key, summary.values).where(in_range)
        stored = sa.and_(target.c[agg.BUCKET] >= lo, target.c[agg.BUCKET] < hi)
        if user_id is None or "user_id" in summary.dimensions:
            # Every log of these rows is in rollup_fresh: make the stored rows equal them.
            if user_id is not None:
                stored = sa.and_(stored, target.c.user_id == user_id)
            change = _compare(conn, summary, rows, stored)
            # rollup_change holds this compare's change only: written and kept now.
            wrote = _write_change(conn, summary, change) or wrote
            synced[summary.grain] = (summary, change)
        else:
            # Only one user's logs were read: move these rows by the change of a
            # table of the same grain that holds that user's rows.
            source, change = synced[summary.grain]
            assert set(summary.dimensions) < set(source.dimensions), (summary, source)
            c = change.c
            by = [c[k] for k in summary.key]
            _fold(
                conn,
                summary,
                sa.select(
                    *by, *(sa.func.sum(c[f"new_{n}"] - c[f"old_{n}"]).label(n) for n in agg.MEASURE_NAMES)
                ).group_by(*by),
            )
            conn.execute(sa.delete(target).where(stored, target.c[agg.LOG_COUNT] == 0))
    return _fresh_logs(conn, fresh, d_lo, d_hi), wrote


def _fresh_logs(conn: Connection, fresh: sa.TableClause, d_lo: int, d_hi: int) -> int:
    """The consume logs of the days [d_lo, d_hi) in rollup_fresh."""
    f = fresh.c
    return int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(f[agg.LOG_COUNT]), 0)).where(f.day >= d_lo, f.day < d_hi)
        ).scalar_one()
    )


def _rederive(conn: Connection, summary: agg.Summary, change: sa.TableClause, tz: str, lo: int, hi: int) -> None:
    """Make `summary`'s rows at the keys that `change` (the finest table's rollup_change)
    touched equal the sums of the finest table's rows there. The finest table holds every
    dimension and hours cut at local midnights, so each of its rows lies in one key of
    every other table, hour and local day alike: summing them is exactly the GROUP BY of
    those keys' logs, names (MAX) included, whatever rows the other tables held before.
    Where nothing changed this reads nothing: a re-aggregation of unchanged history
    compares one table with the logs, not five. (For one user: the keys of tables
    without users are summed over every user's finest rows, so they stay exact.)"""
    touched = _temp_table_as(conn, "rollup_touched", sa.select(*_key_from_finest(summary, change.c, tz)).distinct())
    if not _has_rows(conn, touched):
        return
    target = summary.table
    _delete_at_keys(conn, target, touched, list(summary.key))
    # The finest rows of the touched buckets only: from the first touched bucket's start
    # to the last one's end, a day lasting at most 25 hours. (A day touched at the range's
    # edge, by an hour straddling a half-hour midnight, reaches out of [lo, hi).) As
    # literal bounds, so that the planner reads an index range of the buckets touched
    # rather than the whole table.
    t = touched.c
    first, last = conn.execute(sa.select(sa.func.min(t[agg.BUCKET]), sa.func.max(t[agg.BUCKET]))).one()
    reach = 26 * HOUR
    f = agg.SUMMARIES[0].table.c
    around = sa.and_(
        f.created_at >= max(first, lo - reach),
        f.created_at < min(last + (HOUR if summary.grain == "hour" else reach), hi + reach),
    )
    rows = sa.select(agg.SUMMARIES[0].table).where(around).subquery("finest")
    key = _key_from_finest(summary, rows.c, tz)
    from_finest = agg.aggregate(rows, key, summary.values).where(
        sa.tuple_(*map(agg.unlabel, key)).in_(sa.select(*(touched.c[k] for k in summary.key)))
    )
    _fold(conn, summary, from_finest, counted=False)


def _key_from_finest(summary: agg.Summary, columns: Any, tz: str) -> list[Any]:
    """`summary`'s key from the columns of a row of the finest table (or its change):
    the hour, or the local day in `tz`, of its bucket, and the summary's dimensions."""
    bucket = columns[agg.BUCKET]
    at = hour_start(bucket) if summary.grain == "hour" else day_start(bucket, tz)
    return [at.label(agg.BUCKET) if k == agg.BUCKET else columns[k] for k in summary.key]


def _derive_all(conn: Connection, summary: agg.Summary, tz: str) -> None:
    """Fill `summary` (emptied) with the sums of the finest table's rows, days in `tz`."""
    rows = agg.SUMMARIES[0].table.alias("finest")
    _fold(conn, summary, agg.aggregate(rows, _key_from_finest(summary, rows.c, tz), summary.values), counted=False)


def _compare(conn: Connection, summary: agg.Summary, fresh: AnySelect, where: Any) -> sa.TableClause:
    """rollup_change: one row per key where the summary's rows matching `where` differ
    from `fresh`, with its attributes and the old_* and new_* measures (0 where the row
    was absent), and `present` (false: the key has no fresh row)."""
    target, key, values = summary.table, list(summary.key), list(summary.values)
    mysql_ = conn.dialect.name == "mysql"
    # MySQL has no FULL JOIN: the fresh rows joined to the stored ones, then the stored
    # rows without a fresh one (below), each a lookup into the fresh rows by their key.
    n: Any = _keyed_temp_table(conn, "rollup_new", target.columns, key, fresh) if mysql_ else fresh.subquery("n")
    o = sa.select(target).where(where).subquery("o")
    on = sa.and_(*(n.c[k] == o.c[k] for k in key))
    differs = sa.or_(n.c[key[0]].is_(None), o.c[key[0]].is_(None), *(n.c[v] != o.c[v] for v in values))
    change = _temp_table_as(
        conn,
        "rollup_change",
        sa.select(
            *(sa.func.coalesce(n.c[k], o.c[k]).label(k) for k in key),
            (n.c[key[0]].is_not(None)).label("present"),
            *(n.c[a] for a in summary.attributes),
            *(sa.func.coalesce(n.c[v], 0).label(f"new_{v}") for v in agg.MEASURE_NAMES),
            *(sa.func.coalesce(o.c[v], 0).label(f"old_{v}") for v in agg.MEASURE_NAMES),
        )
        .select_from(n.outerjoin(o, on, full=not mysql_))
        .where(differs),
    )
    if mysql_ and _may_lack_fresh_rows(conn, target, where, n, change):
        absent = (
            sa.select(
                *(o.c[k] for k in key),
                sa.false(),
                *(sa.literal("") for _ in summary.attributes),
                *(sa.literal(0) for _ in agg.MEASURE_NAMES),
                *(o.c[v] for v in agg.MEASURE_NAMES),
            )
            .select_from(o.outerjoin(n, on))
            .where(n.c[key[0]].is_(None))
        )
        conn.execute(sa.insert(change).from_select(list(change.c.keys()), absent))
    return change


def _may_lack_fresh_rows(conn: Connection, target: sa.Table, where: Any, fresh: Any, change: Any) -> bool:
    """MySQL: whether some stored row matching `where` may have no fresh row, judged by
    counting: the stored rows (an index-only count) against the fresh rows that found a
    stored one, at least the fresh rows less the change rows with no old count. (A fresh
    row whose stored row was hand-edited to a count of 0 is then taken for unmatched: the
    estimate errs low, towards looking.) Equal counts prove there is none, and spare the
    search, which reads every stored row of the range whole: a quarter of an unchanged
    day's re-check on MariaDB."""

    def count(table: Any, *condition: Any) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*condition)).scalar_one())

    matched_at_least = count(fresh) - count(change, change.c[f"old_{agg.LOG_COUNT}"] == 0)
    return count(target, where) > matched_at_least


def _write_change(conn: Connection, summary: agg.Summary, change: sa.TableClause) -> bool:
    """Write rollup_change into the summary's table: delete the keys no longer present,
    set the others to their new values. Returns whether there was anything to write."""
    target, key, values = summary.table, list(summary.key), list(summary.values)
    c = change.c
    if not _has_rows(conn, change):
        return False
    # Usually nothing is gone (a range re-checked, or filled after the tables were
    # emptied): then there is no DELETE to plan, against a target whose statistics may
    # say it is empty while the chunk fills it.
    if _has_rows(conn, change, sa.not_(c.present)):
        _delete_at_keys(conn, target, change, key, sa.not_(c.present))
    present = sa.select(
        *(c[k] for k in key), *(c[a] for a in summary.attributes), *(c[f"new_{v}"] for v in agg.MEASURE_NAMES)
    ).where(c.present)
    _upsert(conn, target, key + values, present, key, lambda new: {v: new[v] for v in values}, counted=False)
    return True


# --- retention's compaction ----------------------------------------------------------


def compact_to_days(conn: Connection, summary: agg.Summary, lo: int | None, hi: int, tz: str) -> int:
    """Replace the rows of `summary` (a table of hours cut at local midnights in `tz`)
    whose bucket lies in [lo, hi) (lo None: from the first) by one row per local day and
    key: the same sums, so every day, week and month answer stays exact. `hi` and `lo`
    must be local midnights. Returns the rows replaced; runs in the caller's transaction
    (under the rollup's lock)."""
    assert summary.cut_at_midnight, summary
    t = summary.table
    where = t.c.created_at < hi if lo is None else t.c.created_at.between(lo, hi - 1)
    rows = sa.select(t).where(where).subquery("cut_hours")
    key = [day_start(rows.c.created_at, tz).label(agg.BUCKET) if k == agg.BUCKET else rows.c[k] for k in summary.key]
    days = _temp_table_as(conn, "rollup_days", agg.aggregate(rows, key, summary.values))
    n = conn.execute(sa.delete(t).where(where)).rowcount
    # WHERE: SQLite would read `FROM rollup_days ON CONFLICT` as a join's ON otherwise.
    _fold(conn, summary, sa.select(*(days.c[c.name] for c in t.columns)).where(sa.true()), counted=False)
    return int(n)
