"""The tables: new-api's `users`, `logs`, `tokens` and `channels` (read, created only
when absent), and the rollup's bookkeeping:
- rollup_state: how far the rollup has got (one row);
- rollup_gap: log id ranges the rollup passed while they were not visible, because their
  transaction had not committed yet (or never will); see shared.rollup.

The summary tables are declared in shared.aggregation, beside the definition of what
they hold.
"""

from __future__ import annotations

from sqlalchemy import (
    CHAR,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

# GORM names an index idx_<table>_<column>; so do we, so that our `logs` and `users`
# look like new-api's own.
metadata = MetaData(naming_convention={"ix": "idx_%(table_name)s_%(column_0_name)s"})

# SQLite auto-increments only an INTEGER PRIMARY KEY; everywhere else it is a bigint.
BigId = BigInteger().with_variant(Integer(), "sqlite")

# --- new-api's tables (facts from spec/new-api-schema.md) -----------------------------

users = Table(
    "users",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("username", Text, unique=True, index=True),
    Column("password", Text, nullable=False, server_default=""),
    Column("display_name", Text, index=True),
    Column("role", BigInteger, server_default="1"),
    Column("status", BigInteger, server_default="1"),
    Column("email", Text, index=True),
    Column("access_token", CHAR(32), unique=True, nullable=True),
    Column("quota", BigInteger, server_default="0"),
    Column("used_quota", BigInteger, server_default="0"),
    Column("request_count", BigInteger, server_default="0"),
    Column("group", String(64), server_default="default"),
    Column("aff_code", String(32), unique=True),
    Column("inviter_id", BigInteger, index=True),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    Column("created_at", BigInteger),
    sqlite_autoincrement=True,
)

ROLE_USER = 1
ROLE_ADMIN = 10
ROLE_ROOT = 100
STATUS_ENABLED = 1
STATUS_DISABLED = 2

logs = Table(
    "logs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, index=True),
    Column("created_at", BigInteger),
    Column("type", BigInteger),
    Column("content", Text),
    Column("username", Text, server_default="", index=True),
    Column("token_name", Text, server_default="", index=True),
    Column("model_name", Text, server_default="", index=True),
    Column("quota", BigInteger, server_default="0"),
    Column("prompt_tokens", BigInteger, server_default="0"),
    Column("completion_tokens", BigInteger, server_default="0"),
    Column("use_time", BigInteger, server_default="0"),
    Column("is_stream", Boolean),
    Column("channel_id", BigInteger, index=True),
    Column("token_id", BigInteger, server_default="0", index=True),
    Column("group", Text, index=True),
    Column("ip", Text, server_default="", index=True),
    Column("other", Text),
    Index("idx_user_id_id", "user_id", "id"),
    Index("idx_created_at_id", "created_at", "id"),
    Index("idx_created_at_type", "created_at", "type"),
    Index("index_username_model_name", "model_name", "username"),
    sqlite_autoincrement=True,
)

# The API keys users call the gateway with. `key` is the secret: created for a standalone
# install, never read. logs.token_id refers to id; logs.token_name copies name.
tokens = Table(
    "tokens",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, index=True),
    Column("key", String(128), unique=True),
    Column("name", Text, index=True),
    Column("status", BigInteger, server_default="1"),
    Column("group", Text, server_default=""),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    sqlite_autoincrement=True,
)

# The upstream providers a request was routed to. `key` holds upstream secrets: created
# for a standalone install, never read (only id and name are).
channels = Table(
    "channels",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", Text, index=True),
    Column("key", Text, nullable=False, server_default=""),
    Column("status", BigInteger, server_default="1"),
    sqlite_autoincrement=True,
)

# Log types; only consume logs count as usage.
LOG_TOPUP, LOG_CONSUME, LOG_MANAGE, LOG_SYSTEM, LOG_ERROR, LOG_REFUND = 1, 2, 3, 4, 5, 6

# --- ours ----------------------------------------------------------------------------
# The summary tables (hourly_usage, daily_usage, hourly_model_usage, daily_model_usage,
# hourly_detail_usage, daily_detail_usage) are declared in shared.aggregation, from the
# dimensions and measures they hold.

rollup_state = Table(
    "rollup_state",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    # Every log with id <= last_log_id is counted, except ids inside a rollup_gap range.
    Column("last_log_id", BigInteger, nullable=False, server_default="0"),
    # The STATS_TIMEZONE the daily rows were built in.
    Column("timezone", Text, nullable=True),
    Column("last_tick_at", Float, nullable=True),
    Column("last_tick_seconds", Float, nullable=True),
    Column("last_tick_logs", BigInteger, nullable=True),
    # Retention's horizon (migration 0004): hourly rows before it are gone, and
    # hourly_detail_usage holds whole local days there (NULL: every hour is kept).
    Column("hours_kept_from", BigInteger, nullable=True),
)

rollup_gap = Table(
    "rollup_gap",
    metadata,
    Column("lo", BigInteger, primary_key=True),
    Column("hi", BigInteger, nullable=False),
    # Database clock when the gap was seen; a gap is closed once no transaction that
    # began before this moment still writes to logs.
    Column("discovered_at", DateTime(timezone=True), nullable=False),
    # Set once no such transaction was left: the next tick counts what committed in the
    # range and then forgets the gap.
    Column("settled_at", DateTime(timezone=True), nullable=True),
)
