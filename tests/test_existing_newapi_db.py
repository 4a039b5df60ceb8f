"""`db upgrade` beside an existing new-api database (PostgreSQL, and MariaDB with the
tables GORM makes on MySQL).

A fixture creates new-api's own `users` and `logs` the way new-api (GORM) does -- bigserial
ids, text columns, its indexes, and the columns usage-stats never reads (request_id,
aff_code, stripe_customer, ...) -- and fills them. Then our migrations run:
- new-api's tables keep exactly their columns, indexes and rows;
- ours are added;
- the first tick rolls up the existing history exactly (equal to a GROUP BY over logs).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from shared.ops import run_rollup
from tests.api_support import make_api, ok_data
from tests.conftest import throwaway_database

pytestmark = pytest.mark.integration

# Written from the facts in spec/new-api-schema.md (GORM on PostgreSQL: int -> bigint,
# string -> text, primary key bigserial, index names idx_<table>_<column>).
NEWAPI_DDL = [
    """CREATE TABLE "users" (
        "id" bigserial,
        "username" text,
        "password" text NOT NULL,
        "display_name" text,
        "role" bigint DEFAULT 1,
        "status" bigint DEFAULT 1,
        "email" text,
        "github_id" text,
        "discord_id" text,
        "oidc_id" text,
        "wechat_id" text,
        "telegram_id" text,
        "linux_do_id" text,
        "access_token" char(32),
        "quota" bigint DEFAULT 0,
        "used_quota" bigint DEFAULT 0,
        "request_count" bigint DEFAULT 0,
        "group" varchar(64) DEFAULT 'default',
        "aff_code" varchar(32),
        "aff_count" bigint DEFAULT 0,
        "aff_quota" bigint DEFAULT 0,
        "aff_history" bigint DEFAULT 0,
        "inviter_id" bigint,
        "deleted_at" timestamptz,
        "setting" text,
        "remark" varchar(255),
        "stripe_customer" varchar(64),
        "created_at" bigint,
        "last_login_at" bigint DEFAULT 0,
        "auth_version" bigint NOT NULL DEFAULT 1,
        PRIMARY KEY ("id"),
        CONSTRAINT "uni_users_username" UNIQUE ("username")
    )""",
    'CREATE INDEX "idx_users_username" ON "users" ("username")',
    'CREATE INDEX "idx_users_display_name" ON "users" ("display_name")',
    'CREATE INDEX "idx_users_email" ON "users" ("email")',
    'CREATE INDEX "idx_users_github_id" ON "users" ("github_id")',
    'CREATE INDEX "idx_users_discord_id" ON "users" ("discord_id")',
    'CREATE INDEX "idx_users_oidc_id" ON "users" ("oidc_id")',
    'CREATE INDEX "idx_users_wechat_id" ON "users" ("wechat_id")',
    'CREATE INDEX "idx_users_telegram_id" ON "users" ("telegram_id")',
    'CREATE INDEX "idx_users_linux_do_id" ON "users" ("linux_do_id")',
    'CREATE UNIQUE INDEX "idx_users_access_token" ON "users" ("access_token")',
    'CREATE UNIQUE INDEX "idx_users_aff_code" ON "users" ("aff_code")',
    'CREATE INDEX "idx_users_inviter_id" ON "users" ("inviter_id")',
    'CREATE INDEX "idx_users_deleted_at" ON "users" ("deleted_at")',
    'CREATE INDEX "idx_users_stripe_customer" ON "users" ("stripe_customer")',
    """CREATE TABLE "logs" (
        "id" bigserial,
        "user_id" bigint,
        "created_at" bigint,
        "type" bigint,
        "content" text,
        "username" text DEFAULT '',
        "token_name" text DEFAULT '',
        "model_name" text DEFAULT '',
        "quota" bigint DEFAULT 0,
        "prompt_tokens" bigint DEFAULT 0,
        "completion_tokens" bigint DEFAULT 0,
        "use_time" bigint DEFAULT 0,
        "is_stream" boolean,
        "channel_id" bigint,
        "token_id" bigint DEFAULT 0,
        "group" text,
        "ip" text DEFAULT '',
        "request_id" varchar(64) DEFAULT '',
        "upstream_request_id" varchar(128) DEFAULT '',
        "other" text,
        PRIMARY KEY ("id")
    )""",
    'CREATE INDEX "idx_logs_user_id" ON "logs" ("user_id")',
    'CREATE INDEX "idx_user_id_id" ON "logs" ("user_id", "id")',
    'CREATE INDEX "idx_created_at_id" ON "logs" ("created_at", "id")',
    'CREATE INDEX "idx_created_at_type" ON "logs" ("created_at", "type")',
    'CREATE INDEX "idx_logs_username" ON "logs" ("username")',
    'CREATE INDEX "index_username_model_name" ON "logs" ("model_name", "username")',
    'CREATE INDEX "idx_logs_token_name" ON "logs" ("token_name")',
    'CREATE INDEX "idx_logs_model_name" ON "logs" ("model_name")',
    'CREATE INDEX "idx_logs_channel_id" ON "logs" ("channel_id")',
    'CREATE INDEX "idx_logs_token_id" ON "logs" ("token_id")',
    'CREATE INDEX "idx_logs_group" ON "logs" ("group")',
    'CREATE INDEX "idx_logs_ip" ON "logs" ("ip")',
    'CREATE INDEX "idx_logs_request_id" ON "logs" ("request_id")',
    'CREATE INDEX "idx_logs_upstream_request_id" ON "logs" ("upstream_request_id")',
    # tokens and channels, with more columns than usage-stats reads (it reads id and name,
    # and tokens.deleted_at; never the secret `key`).
    """CREATE TABLE "tokens" (
        "id" bigserial,
        "user_id" bigint,
        "key" varchar(128),
        "status" bigint DEFAULT 1,
        "name" text,
        "created_time" bigint,
        "accessed_time" bigint,
        "expired_time" bigint DEFAULT -1,
        "remain_quota" bigint DEFAULT 0,
        "unlimited_quota" boolean,
        "used_quota" bigint DEFAULT 0,
        "group" text DEFAULT '',
        "deleted_at" timestamptz,
        PRIMARY KEY ("id"),
        CONSTRAINT "uni_tokens_key" UNIQUE ("key")
    )""",
    'CREATE INDEX "idx_tokens_user_id" ON "tokens" ("user_id")',
    'CREATE INDEX "idx_tokens_name" ON "tokens" ("name")',
    """CREATE TABLE "channels" (
        "id" bigserial,
        "type" bigint DEFAULT 0,
        "key" text NOT NULL,
        "status" bigint DEFAULT 1,
        "name" text,
        "base_url" text DEFAULT '',
        "models" text,
        "group" varchar(64) DEFAULT 'default',
        PRIMARY KEY ("id")
    )""",
    'CREATE INDEX "idx_channels_name" ON "channels" ("name")',
]
NEWAPI_TABLES = ("users", "logs", "tokens", "channels")

# GORM on MySQL (spec/new-api-schema.md): bigint AUTO_INCREMENT ids, indexed or defaulted
# strings varchar(191), other text longtext, datetime(3) soft deletes, backquotes, utf8mb4.
_INDEXED_TEXT = {
    "username",
    "display_name",
    "email",
    "github_id",
    "discord_id",
    "oidc_id",
    "wechat_id",
    "telegram_id",
    "linux_do_id",
    "token_name",
    "model_name",
    "group",
    "ip",
    "name",
}


def _mysql_ddl(statement: str) -> str:
    lines = []
    for line in statement.replace('"', "`").splitlines():
        column = line.strip().split(" ", 1)[0].strip("`")
        if " text" in line:
            wide = column in _INDEXED_TEXT or "DEFAULT" in line
            line = line.replace(" text", " varchar(191)" if wide else " longtext")
        lines.append(line.replace("bigserial", "bigint AUTO_INCREMENT").replace("timestamptz", "datetime(3) NULL"))
    out = "\n".join(lines)
    return out + " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if out.startswith("CREATE TABLE") else out


NEWAPI_MYSQL_DDL = [_mysql_ddl(d) for d in NEWAPI_DDL]

T0 = 1_700_000_000
MODELS = ("gpt-4o", "claude-3-5-sonnet", "deepseek-chat")


@pytest.fixture(params=["postgresql", "mysql"])
def newapi_url(request):
    """A fresh database holding new-api's tables and some history, dropped afterwards."""
    with throwaway_database("usage_stats_newapi", request.param) as url:
        yield _with_newapi_history(url)


def _with_newapi_history(url: str) -> str:
    engine = make_engine(url)
    mysql = engine.dialect.name == "mysql"

    def q(sql: str) -> str:  # identifiers as the database quotes them (group and key are reserved)
        return sql.replace('"', "`") if mysql else sql

    with engine.begin() as conn:
        for ddl in NEWAPI_MYSQL_DDL if mysql else NEWAPI_DDL:
            conn.exec_driver_sql(ddl)
        for i in range(1, 6):
            conn.exec_driver_sql(
                q(
                    "INSERT INTO users (username, password, display_name, role, status, access_token, aff_code, "
                    '"group", created_at, setting, remark, stripe_customer) '
                    "VALUES (%(u)s, 'hash', %(u)s, %(role)s, 1, %(tok)s, %(aff)s, 'default', %(t)s, '{}', 'r', 'cus_x')"
                ),
                {"u": f"user{i}", "role": 100 if i == 1 else 1, "tok": f"{i:032d}", "aff": f"AF{i}", "t": T0},
            )
        for i in range(4):
            conn.exec_driver_sql(
                q('INSERT INTO tokens (user_id, "key", name, created_time) VALUES (%(u)s, %(k)s, %(n)s, 0)'),
                {"u": 1 + i, "k": f"sk-secret-{i}", "n": f"key-{i}"},
            )
        for i in range(2):
            conn.exec_driver_sql(
                q("""INSERT INTO channels ("key", name, models) VALUES ('upstream-secret', %(n)s, 'gpt-4o')"""),
                {"n": f"channel-main-{i}"},
            )
        rows = []
        for n in range(600):
            kind = 2 if n % 7 else (5 if n % 2 else 3)  # some error and manage logs
            rows.append(
                {
                    "user_id": 1 + n % 5,
                    "created_at": T0 + n * 997,
                    "type": kind,
                    "content": f"log {n}",
                    "username": f"user{1 + n % 5}",
                    "token_name": "default",
                    "model_name": MODELS[n % 3],
                    "quota": 100 + n,
                    "prompt_tokens": n % 50,
                    "completion_tokens": n % 13,
                    "use_time": 1,
                    "is_stream": bool(n % 2),
                    "channel_id": 1 + n % 2,
                    "token_id": n % 4,
                    "group": "default",
                    "ip": "10.0.0.1",
                    "request_id": f"req-{n}",
                    "upstream_request_id": f"up-{n}",
                    "other": "{}",
                }
            )
        cols = list(rows[0])
        conn.exec_driver_sql(
            q(
                f"INSERT INTO logs ({', '.join(chr(34) + c + chr(34) for c in cols)}) "
                f"VALUES ({', '.join('%(' + c + ')s' for c in cols)})"
            ),
            rows,
        )
    engine.dispose()
    return url


def _snapshot(engine) -> dict:
    if engine.dialect.name == "mysql":
        return _mysql_snapshot(engine)
    with engine.connect() as conn:
        out = {}
        for table in NEWAPI_TABLES:
            out[table, "columns"] = conn.execute(
                sa.text(
                    "SELECT column_name, data_type, character_maximum_length, column_default, is_nullable "
                    "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = :t "
                    "ORDER BY ordinal_position"
                ),
                {"t": table},
            ).all()
            out[table, "indexes"] = conn.execute(
                sa.text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = :t "
                    "ORDER BY indexname"
                ),
                {"t": table},
            ).all()
            out[table, "constraints"] = conn.execute(
                sa.text(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
                    "ORDER BY conname"
                ),
                {"t": table},
            ).all()
            out[table, "rows"] = conn.execute(sa.text(f'SELECT * FROM "{table}" ORDER BY id')).all()
        out["tables"] = (
            conn.execute(
                sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
            )
            .scalars()
            .all()
        )
    return out


def _mysql_snapshot(engine) -> dict:
    """Each new-api table's full definition (SHOW CREATE TABLE: columns, types, defaults,
    collations, indexes), its rows, and the tables there are."""
    with engine.connect() as conn:
        out = {}
        for table in NEWAPI_TABLES:
            out[table, "definition"] = conn.exec_driver_sql(f"SHOW CREATE TABLE `{table}`").one()[1]
            out[table, "rows"] = conn.exec_driver_sql(f"SELECT * FROM `{table}` ORDER BY id").all()
        out["tables"] = sorted(conn.exec_driver_sql("SHOW TABLES").scalars().all())
    return out


def test_upgrade_leaves_newapi_tables_alone_and_rolls_up_the_history(newapi_url):
    engine = make_engine(newapi_url)
    try:
        before = _snapshot(engine)
        assert before["tables"] == sorted(NEWAPI_TABLES)
        assert len(before["logs", "rows"]) == 600 and len(before["users", "rows"]) == 5

        upgrade(engine)
        upgrade(engine)  # idempotent

        after = _snapshot(engine)
        for key in before:
            if key != "tables":
                assert after[key] == before[key], key
        ours = {
            "hourly_usage",
            "daily_usage",
            "hourly_model_usage",
            "daily_model_usage",
            "hourly_detail_usage",
            "rollup_state",
            "rollup_gap",
            "rollup_chunk",
            "usage_stats_alembic_version",
        }
        assert set(after["tables"]) == set(NEWAPI_TABLES) | ours

        settings = Settings(database_url=newapi_url, rollup_batch_size=128)
        result = run_rollup(engine, settings, wait=True)
        assert result.batches == 5 and result.last_log_id == 600 and result.logs_behind == 0

        with engine.connect() as conn:
            expected = conn.execute(
                sa.text(
                    "SELECT user_id, created_at - created_at % 3600, model_name, count(*), sum(quota), "
                    "sum(prompt_tokens + completion_tokens) FROM logs WHERE type = 2 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
                )
            ).all()
            actual = conn.execute(
                sa.text(
                    "SELECT user_id, created_at, model_name, count, quota, token_used FROM hourly_usage ORDER BY 1, 2, 3"
                )
            ).all()
            assert actual == expected and len(actual) > 0
            daily = conn.execute(sa.text("SELECT sum(count), sum(quota) FROM daily_model_usage")).one()
            raw = conn.execute(sa.text("SELECT count(*), sum(quota) FROM logs WHERE type = 2")).one()
            assert tuple(daily) == tuple(raw)
            by_channel = conn.execute(
                sa.text(
                    "SELECT channel_id, token_id, count(*), sum(quota) FROM logs WHERE type = 2 GROUP BY 1, 2 ORDER BY 1, 2"
                )
            ).all()
            detail = conn.execute(
                sa.text(
                    "SELECT channel_id, token_id, sum(count), sum(quota) FROM hourly_detail_usage GROUP BY 1, 2 "
                    "ORDER BY 1, 2"
                )
            ).all()
            assert [tuple(r) for r in detail] == [tuple(r) for r in by_channel] and len(detail) == 4

        # Per key and channel, named from new-api's own tables: key ids 1-3 are known, id 0
        # (n % 4 == 0) keeps the name its logs recorded; both channels are named.
        api = make_api(engine)
        root_token = f"{1:032d}"
        rows = ok_data(
            api.get(
                "/api/data/",
                root_token,
                1,
                group_by="token,channel",
                granularity="day",
                start_timestamp=T0 - 86400,
                end_timestamp=T0 + 8 * 86400,
            )
        )
        assert {(r["token_id"], r["token_name"]) for r in rows} == {
            (0, "default"),
            (1, "key-0"),
            (2, "key-1"),
            (3, "key-2"),
        }
        assert {(r["channel_id"], r["channel_name"]) for r in rows} == {(1, "channel-main-0"), (2, "channel-main-1")}
        assert sum(r["count"] for r in rows) == raw[0]

        # Rolling up and answering read new-api's tables only: they are still as they were.
        final = _snapshot(engine)
        for table in NEWAPI_TABLES:
            assert final[table, "rows"] == before[table, "rows"]
    finally:
        engine.dispose()
