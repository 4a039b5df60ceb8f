"""Benchmark data: new-api-shaped logs on PostgreSQL, generated in SQL from real traces.

The two Azure LLM traces in ../shared/data (read at run time, never copied) give about
28,000 real requests: arrival instants within an hour, prompt and completion tokens.
`generate_logs` tiles them over the benchmark's 30 days in one INSERT ... SELECT over
generate_series: log i takes trace request i mod T, in trace cycle i div T, and each cycle
is stretched over its share of the period, so the traces' bursts and quiet spells are kept
and ids grow with time, as in a gateway. Users follow a power law (user 1 is the heaviest,
with several percent of all requests), each user keeps to three neighbouring models out
of 40, mostly the first, and about 3% of rows are other log types (errors, top-ups) that
the rollup must skip. Everything is seeded: the same rows on every run.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from shared import models as m

DAY = 86400
USERS = 1000
MODELS = 40
DAYS = 30
# A fixed, whole-day-aligned period, so runs are comparable: 2026-10-01 .. 2026-10-31 UTC.
PERIOD_START = 1790812800
PERIOD_END = PERIOD_START + DAYS * DAY
ADMIN_ID = USERS + 1


def trace_dir() -> Path:
    """../shared/data beside the project root, or BENCH_TRACE_DIR."""
    here = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("BENCH_TRACE_DIR", here.parent / "shared" / "data"))


def _model_names() -> list[str]:
    families = [
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
    return [f"{f}-{v}" for v in ("2024", "2025") for f in families][:MODELS]


def user_token(user_id: int) -> str:
    """Deterministic 32-character access tokens (md5 hex), so the load generator knows them."""
    import hashlib

    return hashlib.md5(f"bench-user-{user_id}".encode()).hexdigest()


def load_traces(conn) -> int:
    """bench_trace(r, off, prompt, completion): both traces, offsets in seconds from each
    trace's first request, ordered by offset. Returns the number of requests."""
    conn.exec_driver_sql("DROP TABLE IF EXISTS bench_trace")
    conn.exec_driver_sql("CREATE TEMPORARY TABLE bench_trace_raw (src INT, ts TIMESTAMP, prompt INT, completion INT)")
    raw = conn.connection.dbapi_connection
    with raw.cursor() as cur:
        for src, name in enumerate(("azure_llm_trace_2023_conv.csv", "azure_llm_trace_2023_code.csv")):
            buf = io.StringIO()
            with open(trace_dir() / name, newline="") as f:
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
    return conn.exec_driver_sql("SELECT count(*) FROM bench_trace").scalar()


# One statement for every log the benchmark writes. :first is the index of the first
# log (so increments continue the sequence of trace requests), :n how many, spread over
# [:t0, :t0 + :span). Prices are per 1k tokens, from the model's index.
_GENERATE = """
INSERT INTO logs (user_id, created_at, type, content, username, token_name, model_name, quota,
                  prompt_tokens, completion_tokens, use_time, is_stream, channel_id, token_id, "group", ip, other)
SELECT g.user_id, g.created_at, g.type, '', 'user' || g.user_id, 'default', g.model_name,
       CASE WHEN g.type = 2 THEN (g.prompt * (20 + 37 * g.model) + g.completion * (80 + 113 * g.model)) / 1000 ELSE 0 END,
       CASE WHEN g.type = 2 THEN g.prompt ELSE 0 END,
       CASE WHEN g.type = 2 THEN g.completion ELSE 0 END,
       1 + g.completion / 40, g.completion > 64, 1 + g.model % 7, g.user_id, 'default', '', ''
FROM (
    SELECT i, t.prompt, t.completion,
           CAST(:t0 + floor(((i - :first) / :trace_len + CAST(t.off AS FLOAT8) / :trace_span) * :cycle_span) AS BIGINT)
               AS created_at,
           u.user_id,
           ((u.user_id * 7 + CASE WHEN x.pick < 0.7 THEN 0 WHEN x.pick < 0.9 THEN 1 ELSE 2 END) % :models) AS model,
           (:names)[1 + ((u.user_id * 7 + CASE WHEN x.pick < 0.7 THEN 0 WHEN x.pick < 0.9 THEN 1 ELSE 2 END) % :models)]
               AS model_name,
           CASE WHEN x.kind < 0.97 THEN 2 WHEN x.kind < 0.99 THEN 5 ELSE 1 END AS type
    FROM generate_series(CAST(:first AS BIGINT), CAST(:first + :n - 1 AS BIGINT)) AS i
    JOIN bench_trace t ON t.r = i % :trace_len
    -- Deterministic pseudo-random numbers from i (hashes, not random(): reproducible
    -- whatever the plan).
    CROSS JOIN LATERAL (SELECT (abs(CAST(hashint8(i) AS BIGINT)) % 1000000) / CAST(1000000 AS FLOAT8) AS pu,
                               (abs(CAST(hashint8(i + 7919) AS BIGINT)) % 1000000) / CAST(1000000 AS FLOAT8) AS pick,
                               (abs(CAST(hashint8(i + 104729) AS BIGINT)) % 1000000) / CAST(1000000 AS FLOAT8) AS kind) x
    CROSS JOIN LATERAL (SELECT 1 + CAST(floor(:users * power(x.pu, 2.5)) AS INT) AS user_id) u
    ORDER BY i
) g
"""


def generate_logs(conn, first: int, n: int, t0: int, span: int, trace_len: int) -> None:
    """Insert logs number first .. first+n-1, their times tiled from the traces over
    [t0, t0 + span). Needs bench_trace (load_traces) in the same database."""
    trace_span = conn.exec_driver_sql("SELECT max(off) + 1 FROM bench_trace").scalar()
    cycles = -(-n // trace_len)
    conn.execute(
        sa.text(_GENERATE),
        {
            "first": first,
            "n": n,
            "t0": t0,
            "trace_span": float(trace_span),
            "cycle_span": span / cycles,
            "trace_len": trace_len,
            "users": USERS,
            "models": MODELS,
            "names": _model_names(),
        },
    )


def create_users(conn) -> None:
    rows = [
        {
            "id": i,
            "username": f"user{i}",
            "display_name": f"Bench User {i}",
            "role": m.ROLE_USER,
            "status": m.STATUS_ENABLED,
            "access_token": user_token(i),
            "password": "",
            "created_at": PERIOD_START,
        }
        for i in range(1, USERS + 1)
    ]
    rows.append(
        {
            "id": ADMIN_ID,
            "username": "admin",
            "display_name": "Bench Admin",
            "role": m.ROLE_ROOT,
            "status": m.STATUS_ENABLED,
            "access_token": user_token(ADMIN_ID),
            "password": "",
            "created_at": PERIOD_START,
        }
    )
    conn.execute(sa.insert(m.users), rows)
    conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))")


def build(engine: Engine, n_logs: int) -> dict:
    """Fill a freshly migrated database with users and `n_logs` logs over the period.
    The logs' secondary indexes are built after the load, as a restore would."""
    started = time.perf_counter()
    indexes = [ix for ix in m.logs.indexes]
    with engine.begin() as conn:
        create_users(conn)
        trace_len = load_traces(conn)
        for ix in indexes:
            conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{ix.name}"')
        generate_logs(conn, 0, n_logs, PERIOD_START, PERIOD_END - PERIOD_START, trace_len)
    loaded = time.perf_counter() - started
    with engine.begin() as conn:
        for ix in indexes:
            ix.create(conn)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE logs")
        conn.exec_driver_sql("VACUUM ANALYZE users")
    return {
        "logs": n_logs,
        "trace_requests": trace_len,
        "load_seconds": round(loaded, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
