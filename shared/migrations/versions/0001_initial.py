"""Initial schema: new-api's users and logs when absent, and the rollup's tables.

Every table is spelled out here rather than imported from shared.models: a migration
builds the schema of its day, whatever the models say later. tests/test_migrations.py
checks that the migrated schema still equals the models'.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# --- new-api's tables, as new-api has them (spec/new-api-schema.md) ------------------

# GORM names an index idx_<table>_<column>; so does this metadata.
_gateway = sa.MetaData(naming_convention={"ix": "idx_%(table_name)s_%(column_0_name)s"})
# SQLite auto-increments only an INTEGER PRIMARY KEY; everywhere else it is a bigint.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# On MySQL, as GORM makes them there: an indexed or defaulted string is varchar(191)
# (TEXT can be neither), content and other are longtext.
_Indexed = sa.Text().with_variant(sa.String(191), "mysql")
_Long = sa.Text().with_variant(sa.Text(2**32 - 1), "mysql")  # a length this large is LONGTEXT


def _mysql_table():
    return {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


_users = sa.Table(
    "users",
    _gateway,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("username", _Indexed, unique=True, index=True),
    sa.Column("password", _Indexed, nullable=False, server_default=""),
    sa.Column("display_name", _Indexed, index=True),
    sa.Column("role", sa.BigInteger, server_default="1"),
    sa.Column("status", sa.BigInteger, server_default="1"),
    sa.Column("email", _Indexed, index=True),
    sa.Column("access_token", sa.CHAR(32), unique=True, nullable=True),
    sa.Column("quota", sa.BigInteger, server_default="0"),
    sa.Column("used_quota", sa.BigInteger, server_default="0"),
    sa.Column("request_count", sa.BigInteger, server_default="0"),
    sa.Column("group", sa.String(64), server_default="default"),
    sa.Column("aff_code", sa.String(32), unique=True),
    sa.Column("inviter_id", sa.BigInteger, index=True),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_at", sa.BigInteger),
    sqlite_autoincrement=True,
    **_mysql_table(),
)

_logs = sa.Table(
    "logs",
    _gateway,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.BigInteger, index=True),
    sa.Column("created_at", sa.BigInteger),
    sa.Column("type", sa.BigInteger),
    sa.Column("content", _Long),
    sa.Column("username", _Indexed, server_default="", index=True),
    sa.Column("token_name", _Indexed, server_default="", index=True),
    sa.Column("model_name", _Indexed, server_default="", index=True),
    sa.Column("quota", sa.BigInteger, server_default="0"),
    sa.Column("prompt_tokens", sa.BigInteger, server_default="0"),
    sa.Column("completion_tokens", sa.BigInteger, server_default="0"),
    sa.Column("use_time", sa.BigInteger, server_default="0"),
    sa.Column("is_stream", sa.Boolean),
    sa.Column("channel_id", sa.BigInteger, index=True),
    sa.Column("token_id", sa.BigInteger, server_default="0", index=True),
    sa.Column("group", _Indexed, index=True),
    sa.Column("ip", _Indexed, server_default="", index=True),
    sa.Column("other", _Long),
    sa.Index("idx_user_id_id", "user_id", "id"),
    sa.Index("idx_created_at_id", "created_at", "id"),
    sa.Index("idx_created_at_type", "created_at", "type"),
    sa.Index("index_username_model_name", "model_name", "username"),
    sqlite_autoincrement=True,
    **_mysql_table(),
)

# --- ours ----------------------------------------------------------------------------


def _key_text(width: int = 191) -> sa.types.TypeEngine[str]:
    """Text in a key: TEXT; on MySQL (where TEXT cannot be in a key) varchar(`width`) in
    utf8mb4's binary NO PAD collation, so that keys compare by code point as on
    PostgreSQL (COLLATE "C") and SQLite."""
    dialect = op.get_bind().dialect
    if dialect.name != "mysql":
        return sa.Text()
    return sa.String(
        width, collation="utf8mb4_nopad_bin" if getattr(dialect, "is_mariadb", False) else "utf8mb4_0900_bin"
    )


def _measures() -> list[sa.Column[int]]:
    return [
        sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
        for name in ("count", "quota", "token_used", "prompt_tokens", "completion_tokens")
    ]


def upgrade() -> None:
    bind = op.get_bind()
    # The gateway's tables are new-api's, not ours: an existing new-api database keeps
    # them exactly as they are; a standalone install gets them in new-api's shape.
    existing = set(sa.inspect(bind).get_table_names())
    # Not `users` where it lives in another database than `logs` (shared.migrate).
    gateway_tables = context.config.attributes.get("gateway_tables", True)
    for table in (_users, _logs) if gateway_tables else (_logs,):
        if table.name not in existing:
            table.create(bind)

    for name in ("hourly_usage", "daily_usage"):
        op.create_table(
            name,
            sa.Column("user_id", sa.BigInteger, primary_key=True),
            sa.Column("created_at", sa.BigInteger, primary_key=True),
            sa.Column("model_name", _key_text(), primary_key=True),
            sa.Column("username", _key_text(187), nullable=False, server_default=""),
            *_measures(),
            **_mysql_table(),
        )
        op.create_index(f"ix_{name}_created_at", name, ["created_at"])
    for name in ("hourly_model_usage", "daily_model_usage"):
        op.create_table(
            name,
            sa.Column("created_at", sa.BigInteger, primary_key=True),
            sa.Column("model_name", _key_text(), primary_key=True),
            *_measures(),
            **_mysql_table(),
        )
    op.create_table(
        "rollup_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last_log_id", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("timezone", sa.Text, nullable=True),
        # MySQL's FLOAT is 4 bytes, minutes off for a unix time: DOUBLE there.
        sa.Column("last_tick_at", sa.Float().with_variant(sa.Double(), "mysql"), nullable=True),
        sa.Column("last_tick_seconds", sa.Float().with_variant(sa.Double(), "mysql"), nullable=True),
        sa.Column("last_tick_logs", sa.BigInteger, nullable=True),
        **_mysql_table(),
    )
    op.execute("INSERT INTO rollup_state (id, last_log_id) VALUES (1, 0)")
    op.create_table(
        "rollup_gap",
        sa.Column("lo", sa.BigInteger, primary_key=True),
        sa.Column("hi", sa.BigInteger, nullable=False),
        sa.Column("discovered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        **_mysql_table(),
    )


def downgrade() -> None:
    # Only ours: the gateway's tables and their rows are never dropped.
    for name in (
        "rollup_gap",
        "rollup_state",
        "daily_model_usage",
        "hourly_model_usage",
        "daily_usage",
        "hourly_usage",
    ):
        op.drop_table(name)
