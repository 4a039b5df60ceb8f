"""Usage by API key, channel and group: hourly_detail_usage and daily_detail_usage, keyed
by every dimension (user, name at the time, model, key id and name, channel, group); and
new-api's `tokens` and `channels` where absent (a standalone install), for their names.

The new tables start empty. `usage-stats db upgrade` fills them from the raw logs the
rollup has counted, by a re-aggregation of the whole history, once this revision has run
(shared.cli); until then answers grouped by key, channel or group lack the history.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DETAIL_TABLES = ("hourly_detail_usage", "daily_detail_usage")
KEY = ("user_id", "created_at", "model_name", "token_id", "channel_id", "use_group", "username", "token_name")
MEASURES = ("count", "quota", "token_used", "prompt_tokens", "completion_tokens")

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# On MySQL, as GORM makes them there: an indexed or defaulted string is varchar(191).
_Indexed = sa.Text().with_variant(sa.String(191), "mysql")


def _mysql_table():
    return {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


# The key's text on MySQL: new-api's varchar(191), but the user's and the key's names
# 187 (new-api caps them at 20 and 30 characters), so that the key fits InnoDB's 3,072
# bytes (4 x 8 + 4 x 4 x width).
MYSQL_WIDTH = {"model_name": 191, "use_group": 191, "username": 187, "token_name": 187}
_meta = sa.MetaData(naming_convention={"ix": "idx_%(table_name)s_%(column_0_name)s"})
# new-api's tables, as new-api has them (spelled out: the models may change later).
_tokens = sa.Table(
    "tokens",
    _meta,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.BigInteger, index=True),
    sa.Column("key", sa.String(128), unique=True),
    sa.Column("name", _Indexed, index=True),
    sa.Column("status", sa.BigInteger, server_default="1"),
    sa.Column("group", _Indexed, server_default=""),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
    sqlite_autoincrement=True,
    **_mysql_table(),
)
_channels = sa.Table(
    "channels",
    _meta,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("name", _Indexed, index=True),
    sa.Column("key", _Indexed, nullable=False, server_default=""),
    sa.Column("status", sa.BigInteger, server_default="1"),
    sqlite_autoincrement=True,
    **_mysql_table(),
)


def _key_text(bind: sa.engine.Connection, width: int) -> sa.types.TypeEngine[str]:
    """Text in a key: TEXT; on MySQL varchar(`width`) in utf8mb4's binary NO PAD
    collation (keys compare by code point, as on PostgreSQL and SQLite)."""
    if bind.dialect.name != "mysql":
        return sa.Text()
    return sa.String(
        width, collation="utf8mb4_nopad_bin" if getattr(bind.dialect, "is_mariadb", False) else "utf8mb4_0900_bin"
    )


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    # Not where they live in another database than `logs` (shared.migrate).
    gateway_tables = context.config.attributes.get("gateway_tables", True)
    for table in (_tokens, _channels) if gateway_tables else ():
        if table.name not in existing:
            table.create(bind)
    for name in DETAIL_TABLES:
        op.create_table(
            name,
            *(
                sa.Column(k, _key_text(bind, MYSQL_WIDTH[k]) if k in MYSQL_WIDTH else sa.BigInteger, nullable=False)
                for k in KEY
            ),
            *(sa.Column(v, sa.BigInteger, nullable=False, server_default="0") for v in MEASURES),
            sa.PrimaryKeyConstraint(*KEY, name=f"{name}_pkey"),
            **_mysql_table(),
        )
        op.create_index(f"ix_{name}_created_at", name, ["created_at"])


def downgrade() -> None:
    # Only ours: the gateway's tables and their rows are never dropped.
    for name in DETAIL_TABLES:
        op.drop_table(name)
