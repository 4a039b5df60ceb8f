"""Benchmark data: new-api-shaped logs on PostgreSQL, generated in SQL from real traces.

The two Azure LLM traces in ../shared/data (read at run time, never copied) give about
28,000 real requests: arrival instants within an hour, prompt and completion tokens.
`generate_logs` tiles them over the benchmark's 30 days in one INSERT ... SELECT over
generate_series: log i takes trace request i mod T, in trace cycle i div T, and each cycle
is stretched over its share of the period, so the traces' bursts and quiet spells are kept
and ids grow with time, as in a gateway. Which user sends log i, and for which of the 40
models, is the data shape (bench/shapes.py: dense or sparse). About 3% of rows are other
log types (errors, top-ups) that the rollup must skip. Everything is seeded: the same rows
on every run (pseudo-random numbers are hashes of the log's number or the user's id).

Keys, channels and groups, as a gateway's logs carry them (the same in both shapes):
- each user owns 1 to 3 API keys (about 2,000 in all): key ids 3(u-1)+1 .. 3(u-1)+k for
  user u, named "default", "ci" and "prod-<n>" (so names repeat across users, as in a real
  gateway; only the id tells keys apart). A user's first key sends most requests. Every
  5th user's third key is soft-deleted (tokens.deleted_at, just after the period), its logs
  kept, as when a user revokes a key;
- the 40 models are 20 families of two versions; each family is served by one channel (odd
  families) or by a primary and a backup channel taking 75 % / 25 % (even ones): 30
  channels. One backup channel has logs but no `channels` row, as a deleted channel;
- each user is in one group, "default" (70 %), "vip" (20 %) or "svip" (10 %), which their
  logs and keys carry.
`tokens` and `channels` rows are written only where those tables exist, with a random
placeholder in their secret `key` column.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from shared import aggregation as agg
from shared import models as m

from .shapes import DEFAULT_SHAPE, describe, shape

DAY = 86400
USERS = 1000
MODELS = 40
DAYS = 30
# A fixed, whole-day-aligned period, so runs are comparable: 2026-10-01 .. 2026-10-31 UTC.
PERIOD_START = 1790812800
PERIOD_END = PERIOD_START + DAYS * DAY
ADMIN_ID = USERS + 1

FAMILIES = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "o3-mini",
    "claude-3-5-sonnet",
    "claude-3-5-haiku",
    "claude-3-7-sonnet",
    "gemini-1.5-pro",
    "gemini-2.0-flash",
    "deepseek-chat",
    "deepseek-reasoner",
    "qwen-max",
    "qwen-plus",
    "glm-4",
    "moonshot-v1-8k",
    "mistral-large",
    "llama-3.1-70b",
    "command-r-plus",
    "yi-large",
    "text-embedding-3-small",
]


def size_label(rows: int) -> str:
    """1m, 10m, 250k: a data set's size in names."""
    return f"{rows // 1_000_000}m" if rows % 1_000_000 == 0 else f"{rows // 1000}k"


def database_name(shape_name: str, rows: int) -> str:
    """The benchmark database of one shape and size, e.g. usage_stats_bench_dense_1m."""
    return f"usage_stats_bench_{shape(shape_name).name}_{size_label(rows)}"


TRACE_FILES = ("azure_llm_trace_2023_conv.csv", "azure_llm_trace_2023_code.csv")


def trace_dir() -> Path:
    """../shared/data beside the project root, or BENCH_TRACE_DIR; exits with where to get
    the traces when they are not there."""
    here = Path(__file__).resolve().parent.parent
    folder = Path(os.environ.get("BENCH_TRACE_DIR", here.parent / "shared" / "data"))
    missing = [name for name in TRACE_FILES if not (folder / name).is_file()]
    if missing:
        raise SystemExit(
            f"bench: the request traces {', '.join(missing)} are not in {folder}. They are the "
            "'Azure LLM inference trace 2023' of the Azure Public Dataset (github.com/Azure/"
            "AzurePublicDataset, files AzureLLMInferenceTrace_conv.csv and AzureLLMInferenceTrace_code.csv, "
            "CC BY 4.0): download them, save them under the names above, and point BENCH_TRACE_DIR at "
            "their folder."
        )
    return folder


def model_names() -> list[str]:
    """Model index -> name; index i is a version of family i mod len(FAMILIES)."""
    return [f"{f}-{v}" for v in ("2024", "2025") for f in FAMILIES][:MODELS]


def user_token(user_id: int) -> str:
    """Deterministic 32-character access tokens (md5 hex), so the load generator knows them.
    create_users computes the same in SQL."""
    return hashlib.md5(f"bench-user-{user_id}".encode()).hexdigest()


# --- keys, channels and groups: SQL expressions, the one definition for logs and rows ---------
# {u}: a user id (INT); {slot}: the key's 0-based number among its user's keys;
# {f}: a model family index; {model}: a model index; {chan}: a uniform number in [0, 1).


def _hash01(seed: str, salt: int) -> str:
    """A uniform number in [0, 1) from an integer expression, reproducible whatever the plan."""
    return f"((abs(CAST(hashint8(CAST({seed} AS BIGINT) + {salt}) AS BIGINT)) % 1000000) / CAST(1000000 AS FLOAT8))"


def _group(u: str) -> str:
    pick = _hash01(u, 101)
    return f"(CASE WHEN {pick} < 0.7 THEN 'default' WHEN {pick} < 0.9 THEN 'vip' ELSE 'svip' END)"


def _keys_of(u: str) -> str:
    return f"(1 + CAST(floor(3 * {_hash01(u, 211)}) AS INT))"


def _token_id(u: str, slot: str) -> str:
    return f"(3 * ({u} - 1) + 1 + {slot})"


def _token_name(u: str, slot: str) -> str:
    return f"(CASE {slot} WHEN 0 THEN 'default' WHEN 1 THEN 'ci' ELSE 'prod-' || (1 + {u} % 9) END)"


def _channels_of(f: str) -> str:
    return f"(2 - {f} % 2)"


def _first_channel(f: str) -> str:
    # Families before f hold f + ceil(f / 2) channels (two for each even one).
    return f"(1 + {f} + ({f} + 1) / 2)"


def _channel(model: str, chan: str) -> str:
    f = f"({model} % :families)"
    return f"({_first_channel(f)} + CASE WHEN {_channels_of(f)} = 2 AND {chan} >= 0.75 THEN 1 ELSE 0 END)"


# The channel with logs and no row: the backup of the last family that has one.
_DELETED_CHANNEL = "f = :families - 2 + :families % 2 AND slot = 1"


def _placeholder(row_id: str) -> str:
    """Random text for a secret column: never a usable key, unique by the row's id."""
    return f"('bench-placeholder-' || {row_id} || '-' || md5(CAST(random() AS TEXT)))"


# --- the logs -------------------------------------------------------------------------------

# One statement for every log the benchmark writes. :first is the index of the first
# log (so increments continue the sequence of trace requests), :n how many, spread over
# [:t0, :t0 + :span). Prices are per 1k tokens, from the model's index. {user} and {model}
# are the data shape's (bench/shapes.py).
_GENERATE = """
INSERT INTO logs (user_id, created_at, type, content, username, token_name, model_name, quota,
                  prompt_tokens, completion_tokens, use_time, is_stream, channel_id, token_id, "group", ip, other)
SELECT g.user_id, g.created_at, g.type, '', 'user' || g.user_id, {token_name}, g.model_name,
       CASE WHEN g.type = 2 THEN (g.prompt * (20 + 37 * g.model) + g.completion * (80 + 113 * g.model)) / 1000 ELSE 0 END,
       CASE WHEN g.type = 2 THEN g.prompt ELSE 0 END,
       CASE WHEN g.type = 2 THEN g.completion ELSE 0 END,
       1 + g.completion / 40, g.completion > 64, {channel}, {token_id}, {group}, '', ''
FROM (
    SELECT i, t.prompt, t.completion,
           CAST(:t0 + floor(((i - :first) / :trace_len + CAST(t.off AS FLOAT8) / :trace_span) * :cycle_span) AS BIGINT)
               AS created_at,
           u.user_id, mo.model, (:names)[1 + mo.model] AS model_name, k.slot, x.chan,
           CASE WHEN x.kind < 0.97 THEN 2 WHEN x.kind < 0.99 THEN 5 ELSE 1 END AS type
    FROM generate_series(CAST(:first AS BIGINT), CAST(:first + :n - 1 AS BIGINT)) AS i
    JOIN bench_trace t ON t.r = i % :trace_len
    -- Uniform numbers from i, one per choice (_hash01).
    CROSS JOIN LATERAL (SELECT {pu} AS pu, {pick} AS pick, {kind} AS kind, {tok} AS tok, {chan} AS chan) x
    CROSS JOIN LATERAL (SELECT {user} AS user_id) u
    CROSS JOIN LATERAL (SELECT {model} AS model) mo
    -- Which of the user's keys: the first most often (squaring skews toward 0).
    CROSS JOIN LATERAL (SELECT CAST(floor(power(x.tok, 2) * {keys_of}) AS INT) AS slot) k
    ORDER BY i
) g
"""


def _generate_sql(shape_name: str) -> str:
    s = shape(shape_name)
    return _GENERATE.format(
        pu=_hash01("i", 0),
        pick=_hash01("i", 7919),
        kind=_hash01("i", 104729),
        tok=_hash01("i", 1299709),
        chan=_hash01("i", 15485863),
        user=s.user,
        model=s.model,
        keys_of=_keys_of("u.user_id"),
        token_name=_token_name("g.user_id", "g.slot"),
        token_id=_token_id("g.user_id", "g.slot"),
        channel=_channel("g.model", "g.chan"),
        group=_group("g.user_id"),
    )


def load_traces(conn: Connection) -> int:
    """bench_trace(r, off, prompt, completion): both traces, offsets in seconds from each
    trace's first request, ordered by offset. Returns the number of requests."""
    conn.exec_driver_sql("DROP TABLE IF EXISTS bench_trace")
    conn.exec_driver_sql("CREATE TEMPORARY TABLE bench_trace_raw (src INT, ts TIMESTAMP, prompt INT, completion INT)")
    raw: Any = conn.connection.dbapi_connection
    with raw.cursor() as cur:
        folder = trace_dir()
        for src, name in enumerate(TRACE_FILES):
            buf = io.StringIO()
            with open(folder / name, newline="") as f:
                reader = csv.reader(f)
                next(reader)
                for ts, prompt, completion in reader:
                    buf.write(f"{src}\t{ts}\t{prompt}\t{completion}\n")
            buf.seek(0)
            cur.copy_expert("COPY bench_trace_raw (src, ts, prompt, completion) FROM STDIN", buf)
    conn.exec_driver_sql("""
        CREATE TABLE bench_trace AS
        SELECT CAST(row_number() OVER (ORDER BY off, src, prompt) - 1 AS BIGINT) AS r, off, prompt, completion
        FROM (SELECT src, prompt, completion,
                     EXTRACT(EPOCH FROM ts - min(ts) OVER (PARTITION BY src)) AS off
              FROM bench_trace_raw) t
    """)
    conn.exec_driver_sql("CREATE UNIQUE INDEX ON bench_trace (r)")
    conn.exec_driver_sql("ANALYZE bench_trace")
    return int(conn.exec_driver_sql("SELECT count(*) FROM bench_trace").scalar_one())


def generate_logs(
    conn: Connection, first: int, n: int, t0: int, span: int, trace_len: int, shape_name: str = DEFAULT_SHAPE
) -> None:
    """Insert logs number first .. first+n-1 of the data shape, their times tiled from the
    traces over [t0, t0 + span). Needs bench_trace (load_traces) in the same database."""
    trace_span = conn.exec_driver_sql("SELECT max(off) + 1 FROM bench_trace").scalar_one()
    cycles = -(-n // trace_len)
    conn.execute(
        sa.text(_generate_sql(shape_name)),
        {
            "first": first,
            "n": n,
            "t0": t0,
            "trace_span": float(trace_span),
            "cycle_span": span / cycles,
            "trace_len": trace_len,
            "users": USERS,
            "models": MODELS,
            "families": len(FAMILIES),
            "names": model_names(),
        },
    )


# --- users, keys and channels -------------------------------------------------------------


def create_users(conn: Connection) -> None:
    """The 1,000 users, each in their group, and the root user ADMIN_ID."""
    conn.execute(
        sa.text(f"""
            INSERT INTO users (id, username, display_name, role, status, access_token, password, created_at, "group")
            SELECT u, 'user' || u, 'Bench User ' || u, :user_role, :enabled, md5('bench-user-' || u), '', :t0,
                   {_group("u")}
            FROM generate_series(1, :users) AS u
            UNION ALL
            SELECT :admin, 'admin', 'Bench Admin', :root_role, :enabled, md5('bench-user-' || :admin), '', :t0,
                   'default'
        """),
        {
            "users": USERS,
            "admin": ADMIN_ID,
            "user_role": m.ROLE_USER,
            "root_role": m.ROLE_ROOT,
            "enabled": m.STATUS_ENABLED,
            "t0": PERIOD_START,
        },
    )
    conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))")


def _insert_known_columns(conn: Connection, table: str, values: dict[str, str], source: str, params: dict) -> int:
    """INSERT INTO table (the columns of `values` it has) SELECT their expressions FROM
    source; nothing if the table does not exist. Returns the rows written."""
    inspector = sa.inspect(conn)
    if not inspector.has_table(table):
        return 0
    present = {c["name"] for c in inspector.get_columns(table)}
    columns = [c for c in values if c in present]
    names = ", ".join(f'"{c}"' for c in columns)
    exprs = ", ".join(values[c] for c in columns)
    written = conn.execute(sa.text(f"INSERT INTO {table} ({names}) SELECT {exprs} FROM {source}"), params).rowcount
    conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    return int(written)


def create_tokens(conn: Connection) -> int:
    """Every user's API keys as `tokens` rows, where that table exists; 0 otherwise."""
    return _insert_known_columns(
        conn,
        "tokens",
        {
            "id": _token_id("u", "slot"),
            "user_id": "u",
            "key": _placeholder(_token_id("u", "slot")),
            "name": _token_name("u", "slot"),
            "status": "1",
            "group": _group("u"),
            # Revoked after the period: the logs it sent stay.
            "deleted_at": "CASE WHEN slot = 2 AND u % 5 = 0 THEN to_timestamp(:period_end) END",
        },
        f"generate_series(1, :users) AS u CROSS JOIN generate_series(0, 2) AS slot WHERE slot < {_keys_of('u')}",
        {"users": USERS, "period_end": PERIOD_END},
    )


def create_channels(conn: Connection) -> int:
    """The channels as `channels` rows (but the deleted one), where that table exists; 0 otherwise."""
    cid = f"({_first_channel('f')} + slot)"
    return _insert_known_columns(
        conn,
        "channels",
        {
            "id": cid,
            "name": "(:families_names)[1 + f] || CASE slot WHEN 0 THEN ' primary' ELSE ' backup' END",
            "key": _placeholder(cid),
            "status": "1",
        },
        f"generate_series(0, :families - 1) AS f CROSS JOIN generate_series(0, 1) AS slot "
        f"WHERE slot < {_channels_of('f')} AND NOT ({_DELETED_CHANNEL})",
        {"families": len(FAMILIES), "families_names": FAMILIES},
    )


def create_gateway(conn: Connection) -> dict[str, int]:
    """Users, and their keys and the channels where those tables exist."""
    create_users(conn)
    return {"users": USERS + 1, "tokens": create_tokens(conn), "channels": create_channels(conn)}


# --- a whole data set -----------------------------------------------------------------------


def build(engine: Engine, n_logs: int, shape_name: str = DEFAULT_SHAPE) -> dict[str, Any]:
    """Fill a freshly migrated database with users, keys, channels and `n_logs` logs of the
    data shape over the period. The logs' secondary indexes are built after the load, as a
    restore would. Returns the build's facts, the logs' distribution among them."""
    started = time.perf_counter()
    indexes = list(m.logs.indexes)
    with engine.begin() as conn:
        written = create_gateway(conn)
        trace_len = load_traces(conn)
        for ix in indexes:
            conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{ix.name}"')
        generate_logs(conn, 0, n_logs, PERIOD_START, PERIOD_END - PERIOD_START, trace_len, shape_name)
    loaded = time.perf_counter() - started
    with engine.begin() as conn:
        for ix in indexes:
            ix.create(conn)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("logs", "users", "tokens", "channels"):
            if sa.inspect(conn).has_table(table):
                conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
    total = time.perf_counter() - started
    with engine.connect() as conn:
        distribution = describe(conn)
    return {
        "shape": shape_name,
        "logs": n_logs,
        "trace_requests": trace_len,
        "gateway_rows": written,
        "load_seconds": round(loaded, 1),
        "total_seconds": round(total, 1),
        "distribution": distribution,
    }


# --- storage --------------------------------------------------------------------------------


def storage(engine: Engine) -> dict[str, Any]:
    """What `logs` and each summary table (shared.aggregation.SUMMARIES) take on disk, in
    bytes (pg_total_relation_size: heap, TOAST and indexes) and per million consume logs.
    Measure right after a build and its first rollup (and VACUUM): later re-aggregations
    leave free space in the files that VACUUM reuses but does not return."""
    tables = ["logs", *(s.table.name for s in agg.SUMMARIES)]
    with engine.connect() as conn:
        consume = int(
            conn.execute(
                sa.select(sa.func.count()).select_from(m.logs).where(m.logs.c.type == m.LOG_CONSUME)
            ).scalar_one()
        )
        out: dict[str, Any] = {"consume_logs": consume, "tables": {}}
        for name in tables:
            row = (
                conn.execute(
                    sa.text(f"""
                    SELECT (SELECT count(*) FROM {name}) AS rows,
                           pg_table_size(CAST(:name AS regclass)) AS table_bytes,
                           pg_indexes_size(CAST(:name AS regclass)) AS index_bytes,
                           pg_total_relation_size(CAST(:name AS regclass)) AS total_bytes
                """),
                    {"name": name},
                )
                .mappings()
                .one()
            )
            per_million = 1_000_000 / consume if consume else 0.0
            out["tables"][name] = {
                **row,
                "rows_per_million_logs": round(row["rows"] * per_million),
                "bytes_per_million_logs": round(row["total_bytes"] * per_million),
            }
    return out
