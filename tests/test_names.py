"""shared/names.py: names of API keys and channels from new-api's `tokens` and `channels`.

The expected names are written out by hand here: a key's live name, "Deleted (<id>)" for a
soft-deleted key, the recorded name for a key `tokens` lacks; channels.name, or
"channel-<id>" for a channel `channels` lacks; without the tables, recorded key names and
"channel-<id>". Tests taking `engine` run on SQLite and, marked integration, on PostgreSQL.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import sqlalchemy as sa

from shared import models as m
from shared import names

SECRET = "sk-secret-value"


def add_tokens(engine, rows) -> None:
    """rows: (id, user_id, name, deleted)."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(m.tokens),
            [
                {
                    "id": i,
                    "user_id": uid,
                    "name": name,
                    "key": f"{SECRET}-{i}",
                    "deleted_at": datetime(2025, 1, 2, tzinfo=UTC) if deleted else None,
                }
                for i, uid, name, deleted in rows
            ],
        )


def add_channels(engine, rows) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(m.channels), [{"id": i, "name": name, "key": f"{SECRET}-ch{i}"} for i, name in rows])


def seed(engine) -> None:
    add_tokens(engine, [(1, 7, "live", False), (2, 7, "gone", True), (3, 8, None, False), (4, 8, "", False)])
    add_channels(engine, [(1, "openai-main"), (2, None)])


def test_token_names_live_deleted_and_unknown(engine):
    seed(engine)
    with engine.connect() as conn:
        # Repeated ids are asked once; 5 and 0 are unknown, so absent.
        assert names.token_names(conn, [1, 2, 3, 4, 5, 0, 1]) == {1: "live", 2: "Deleted (2)", 3: "", 4: ""}
        assert names.token_names(conn, []) == {}
        assert names.token_names(conn, iter([2])) == {2: "Deleted (2)"}


def test_channel_names_known_and_unknown(engine):
    seed(engine)
    with engine.connect() as conn:
        assert names.channel_names(conn, [1, 2, 3, 0, 3]) == {1: "openai-main", 2: "", 3: "channel-3", 0: "channel-0"}
        assert names.channel_names(conn, []) == {}


def test_the_labels():
    assert names.deleted_token_name(12) == "Deleted (12)"
    assert names.missing_channel_name(3) == "channel-3"


def test_name_rows_sets_key_names_and_inserts_channel_names(engine):
    seed(engine)
    rows = [
        {"user_id": 7, "token_id": 1, "token_name": "recorded-1", "channel_id": 1, "use_group": "vip", "quota": 5},
        {"user_id": 7, "token_id": 2, "token_name": "recorded-2", "channel_id": 3, "use_group": "vip", "quota": 4},
        {"user_id": 9, "token_id": 9, "token_name": "recorded-9", "channel_id": 2, "use_group": "", "quota": 3},
    ]
    original = [dict(r) for r in rows]
    with engine.connect() as conn:
        named = names.name_rows(conn, rows)
    assert named == [
        {
            "user_id": 7,
            "token_id": 1,
            "token_name": "live",
            "channel_id": 1,
            "channel_name": "openai-main",
            "use_group": "vip",
            "quota": 5,
        },
        {
            "user_id": 7,
            "token_id": 2,
            "token_name": "Deleted (2)",
            "channel_id": 3,
            "channel_name": "channel-3",
            "use_group": "vip",
            "quota": 4,
        },
        {
            "user_id": 9,
            "token_id": 9,
            "token_name": "recorded-9",  # unknown to `tokens`: as recorded
            "channel_id": 2,
            "channel_name": "",
            "use_group": "",
            "quota": 3,
        },
    ]
    # channel_name right after channel_id, every other field in place; the input untouched.
    assert [list(r) for r in named] == [
        ["user_id", "token_id", "token_name", "channel_id", "channel_name", "use_group", "quota"]
    ] * 3
    assert rows == original


def test_name_rows_leaves_rows_without_keys_or_channels(engine):
    seed(engine)
    plain = [{"created_at": 0, "model_name": "gpt-4o", "quota": 1}]
    only_id = [{"token_id": 1, "quota": 1}]  # no token_name column: nothing to set
    with engine.connect() as conn:
        assert names.name_rows(conn, []) == []
        assert names.name_rows(conn, plain) == plain
        assert names.name_rows(conn, only_id) == only_id
        keys_only = names.name_rows(conn, [{"token_id": 2, "token_name": "x", "quota": 1}])
        assert keys_only == [{"token_id": 2, "token_name": "Deleted (2)", "quota": 1}]


def test_without_the_gateway_tables(engine):
    """A database without `tokens` and `channels` (usage-stats beside a log database
    alone): recorded key names, channel-<id>. The tables are dropped inside a transaction
    that is rolled back (DDL is transactional on PostgreSQL and SQLite); MySQL's DDL is
    not, so there they are renamed aside and back."""
    rows = [{"token_id": 1, "token_name": "recorded", "channel_id": 4, "quota": 1}]

    def check(conn):
        assert names.token_names(conn, [1]) == {}
        assert names.channel_names(conn, [4]) == {4: "channel-4"}
        assert names.name_rows(conn, rows) == [
            {"token_id": 1, "token_name": "recorded", "channel_id": 4, "channel_name": "channel-4", "quota": 1}
        ]

    with engine.connect() as conn:
        if engine.dialect.name == "mysql":
            conn.exec_driver_sql("RENAME TABLE tokens TO tokens_aside, channels TO channels_aside")
            try:
                check(conn)
            finally:
                conn.rollback()
                conn.exec_driver_sql("RENAME TABLE tokens_aside TO tokens, channels_aside TO channels")
        else:
            with conn.begin() as tx:
                conn.execute(sa.text("DROP TABLE tokens"))
                conn.execute(sa.text("DROP TABLE channels"))
                check(conn)
                tx.rollback()
        assert sa.inspect(conn).has_table("tokens")


def test_never_reads_the_secret_columns(engine):
    seed(engine)
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        with engine.connect() as conn:
            named = names.name_rows(conn, [{"token_id": i, "token_name": "r", "channel_id": i} for i in (1, 2, 3)])
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    lookups = [s for s in statements if re.search(r"\bFROM (tokens|channels)\b", s)]
    assert len(lookups) == 2, statements
    assert not any(re.search(r"\bkey\b", s, re.IGNORECASE) for s in lookups), lookups
    assert SECRET not in repr(named)


def test_many_ids_in_one_lookup(engine):
    """More ids than SQLite allows bound variables in one statement (32766)."""
    n = 33_000
    add_tokens(engine, [(i, 1, f"k{i}", i % 1000 == 0) for i in range(1, n + 1)])
    rows = [{"token_id": i, "token_name": "r", "channel_id": i} for i in range(1, n + 2)]
    with engine.connect() as conn:
        named = names.name_rows(conn, rows)
    assert named[0] == {"token_id": 1, "token_name": "k1", "channel_id": 1, "channel_name": "channel-1"}
    assert named[999]["token_name"] == "Deleted (1000)"
    assert named[-1]["token_name"] == "r"  # id n + 1: unknown
