"""The tables: new-api's `users`, `logs`, `tokens` and `channels` (read, created only
when absent), and the rollup's bookkeeping:
- rollup_state: how far the rollup has got (one row);
- rollup_gap: log id ranges the rollup passed while they were not visible, because their
  transaction had not committed yet (or never will); see shared.rollup.

The summary tables are declared in shared.aggregation, beside the definition of what
they hold.
"""

from __future__ import annotations

from typing import Any

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
    false,
)
from sqlalchemy.dialects.mysql import DOUBLE, LONGTEXT
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler, TypeCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

# --- text compared by code point on every database ------------------------------------
# PostgreSQL compares our text with COLLATE "C" where it matters, SQLite bytewise. On
# MySQL a key column is VARCHAR (TEXT cannot be in a key) in utf8mb4 with a binary,
# NO PAD collation: 'a' and 'A' are two keys, and so are 'a' and 'a ' (a PAD SPACE
# collation such as utf8mb4_bin would make them one, and a duplicate key).


def mysql_code_point_collation(dialect: Any) -> str:
    """utf8mb4's binary NO PAD collation: MariaDB names it utf8mb4_nopad_bin, MySQL 8
    utf8mb4_0900_bin."""
    return "utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"


class KeyText(TypeDecorator[str]):
    """Text that can be part of a key: TEXT on PostgreSQL and SQLite; on MySQL
    VARCHAR(`length`) in code point order. `length` is the width of new-api's own
    column (varchar(191)) or, where a key would exceed InnoDB's 3,072 bytes, the most
    new-api lets the value be."""

    impl = Text
    cache_ok = True

    def __init__(self, length: int = 191):
        super().__init__()
        self.length = length

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "mysql":
            return dialect.type_descriptor(_MySQLKeyText(self.length))
        return dialect.type_descriptor(Text())


class _MySQLKeyText(String):
    __visit_name__ = "usage_key_text"


@compiles(_MySQLKeyText, "mysql")
def _key_text_mysql(type_: _MySQLKeyText, compiler: TypeCompiler, **kw: Any) -> str:
    return f"VARCHAR({type_.length}) CHARACTER SET utf8mb4 COLLATE {mysql_code_point_collation(compiler.dialect)}"


class code_points(FunctionElement[str]):
    """A text expression compared, grouped and ordered by code point: as it is on
    PostgreSQL's and SQLite's text columns of ours; on MySQL converted to utf8mb4 in the
    binary NO PAD collation (a gateway's columns are in its own, usually case-blind, one)."""

    type = Text()
    inherit_cache = True
    name = "code_points"


@compiles(code_points)
def _code_points_default(element: code_points, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(code_points, "mysql")
def _code_points_mysql(element: code_points, compiler: SQLCompiler, **kw: Any) -> str:
    collation = mysql_code_point_collation(compiler.dialect)
    return f"(CONVERT({compiler.process(element.clauses, **kw)} USING utf8mb4) COLLATE {collation})"


def exactly(column: Any, value: Any) -> Any:
    """`column = value` by code point on every database. On MySQL a gateway's column is in
    its own, usually case- and trailing-blank-blind, collation: the plain equality keeps
    its index, the second test makes the match exact."""
    return _exactly(column, value)


class _exactly(FunctionElement[bool]):
    inherit_cache = True
    name = "exactly"


@compiles(_exactly)
def _exactly_default(element: _exactly, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = element.clauses
    return compiler.process(column == value, **kw)


@compiles(_exactly, "mysql")
def _exactly_mysql(element: _exactly, compiler: SQLCompiler, **kw: Any) -> str:
    column, value = element.clauses
    return f"({compiler.process(column == value, **kw)} AND {compiler.process(code_points(column) == value, **kw)})"


# On MySQL an indexed or defaulted string is new-api's varchar(191) (TEXT can be neither),
# and content and other are longtext, as GORM makes them.
IndexedText = Text().with_variant(String(191), "mysql")
LongText = Text().with_variant(LONGTEXT(), "mysql")

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
    Column("username", IndexedText, unique=True, index=True),
    Column("password", IndexedText, nullable=False, server_default=""),
    Column("display_name", IndexedText, index=True),
    Column("role", BigInteger, server_default="1"),
    Column("status", BigInteger, server_default="1"),
    Column("email", IndexedText, index=True),
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
    Column("content", LongText),
    Column("username", IndexedText, server_default="", index=True),
    Column("token_name", IndexedText, server_default="", index=True),
    Column("model_name", IndexedText, server_default="", index=True),
    Column("quota", BigInteger, server_default="0"),
    Column("prompt_tokens", BigInteger, server_default="0"),
    Column("completion_tokens", BigInteger, server_default="0"),
    Column("use_time", BigInteger, server_default="0"),
    Column("is_stream", Boolean),
    Column("channel_id", BigInteger, index=True),
    Column("token_id", BigInteger, server_default="0", index=True),
    Column("group", IndexedText, index=True),
    Column("ip", IndexedText, server_default="", index=True),
    Column("other", LongText),
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
    Column("name", IndexedText, index=True),
    Column("status", BigInteger, server_default="1"),
    Column("group", IndexedText, server_default=""),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    sqlite_autoincrement=True,
)

# The upstream providers a request was routed to. `key` holds upstream secrets: created
# for a standalone install, never read (only id and name are).
channels = Table(
    "channels",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", IndexedText, index=True),
    Column("key", IndexedText, nullable=False, server_default=""),
    Column("status", BigInteger, server_default="1"),
    sqlite_autoincrement=True,
)

# Log types; only consume logs count as usage.
LOG_TOPUP, LOG_CONSUME, LOG_MANAGE, LOG_SYSTEM, LOG_ERROR, LOG_REFUND = 1, 2, 3, 4, 5, 6

# --- ours ----------------------------------------------------------------------------
# The summary tables (hourly_usage, daily_usage, hourly_model_usage, daily_model_usage,
# hourly_detail_usage) are declared in shared.aggregation, from the
# dimensions and measures they hold.

rollup_state = Table(
    "rollup_state",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    # Every log with id <= last_log_id is counted, except ids inside a rollup_gap range.
    Column("last_log_id", BigInteger, nullable=False, server_default="0"),
    # The STATS_TIMEZONE the daily rows were built in.
    Column("timezone", Text, nullable=True),
    # Double precision everywhere: MySQL's FLOAT is 4 bytes, minutes off for a unix time.
    Column("last_tick_at", Float().with_variant(DOUBLE(asdecimal=False), "mysql"), nullable=True),
    Column("last_tick_seconds", Float().with_variant(DOUBLE(asdecimal=False), "mysql"), nullable=True),
    Column("last_tick_logs", BigInteger, nullable=True),
    # Retention's horizon (migration 0004): hourly rows before it are gone, and
    # hourly_detail_usage holds whole local days there (NULL: every hour is kept).
    Column("hours_kept_from", BigInteger, nullable=True),
    # Moved (+1) in the same transaction as every change of summary rows that
    # last_log_id and the gaps do not show: a re-aggregation that changed rows,
    # retention's compaction, a zone's adoption, an upgrade (migration 0005). With them
    # it is the version of the summary rows (shared.answer_version).
    Column("generation", BigInteger, nullable=False, server_default="0"),
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

# The chunks of a re-aggregation that several workers share (shared.chunks; migration 0006).
rollup_chunk = Table(
    "rollup_chunk",
    metadata,
    Column("job", String(64), primary_key=True),
    Column("lo", BigInteger, primary_key=True),  # the chunk's days: [lo, hi)
    Column("hi", BigInteger, nullable=False),
    Column("user_id", BigInteger, nullable=True),
    Column("check_every_table", Boolean, nullable=False, server_default=false()),
    Column("created_at", BigInteger, nullable=False),
    # Set in the transaction that writes the chunk's rows.
    Column("done_at", BigInteger, nullable=True),
    Column("logs", BigInteger, nullable=True),
    # The generation its write moved rollup_state to (NULL: it changed no row).
    Column("generation", BigInteger, nullable=True),
)
