"""new-api's LOG_SQL_DSN: `logs` in one database, `users`, `tokens` and `channels` in
another (issue 13). The rollup's tables live beside `logs`; who is asking and the names of
keys and channels are read from the main database; nothing joins the two in SQL.

Set up as an operator would, from new-api's own settings (SQL_DSN / LOG_SQL_DSN: Go MySQL
DSNs for MariaDB, postgres:// URLs; SQLITE_PATH and LOG_DATABASE_URL for SQLite files), through the CLI and the app built
from the environment; answers checked against the raw logs.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import sqlalchemy as sa

from api import create_app
from shared import models as m
from shared.cli import main
from shared.config import Settings
from shared.db import dispose_engines, make_engine
from tests.api_support import Api, add_user, committed_logs, expected, ok_data
from tests.conftest import throwaway_database
from tests.logdata import HOUR, insert, log, utc

T0 = utc(2024, 7, 1)
ROOT, ALICE, BOB = 1, 2, 3
TOKENS = {20: "alice-main", 21: "alice-ci", 30: "bob-main"}
CHANNELS = {1: "openai", 2: "azure"}


@contextmanager
def two_databases(family: str, tmp_path) -> Iterator[tuple[dict[str, str], str, str]]:
    """(environment, main URL, log URL) for two new databases of `family`, named as
    new-api's settings name them."""
    if family == "sqlite":
        main_file, log_file = tmp_path / "one-api.db", tmp_path / "logs.db"
        env = {"SQL_DSN": "local", "SQLITE_PATH": str(main_file), "LOG_DATABASE_URL": f"sqlite:///{log_file}"}
        yield env, f"sqlite:///{main_file}", f"sqlite:///{log_file}"
        return
    dialect = "mysql" if family == "mariadb" else "postgresql"
    with ExitStack() as stack:
        main_url = stack.enter_context(throwaway_database("split_main", dialect))
        log_url = stack.enter_context(throwaway_database("split_logs", dialect))

        def dsn(url: str) -> str:  # as new-api writes it
            if dialect == "postgresql":
                return "postgres://" + url.split("://", 1)[1]
            u = sa.make_url(url)
            password = f":{u.password}" if u.password else ""
            return f"{u.username}{password}@tcp({u.host}:{u.port or 3306})/{u.database}?charset=utf8mb4&parseTime=True&loc=Local"

        yield {"SQL_DSN": dsn(main_url), "LOG_SQL_DSN": dsn(log_url)}, main_url, log_url


def newapi_tables(url: str, tables: tuple[str, ...]) -> sa.Engine:
    """`tables` made by new-api's own DDL (as GORM makes it on that database)."""
    from tests.test_existing_newapi_db import NEWAPI_DDL, NEWAPI_MYSQL_DDL

    engine = make_engine(url)
    mysql = engine.dialect.name == "mysql"
    with engine.begin() as conn:
        for ddl in NEWAPI_MYSQL_DDL if mysql else NEWAPI_DDL:
            names = {t for t in tables if f'"{t}"' in ddl or f"`{t}`" in ddl}
            if names:
                conn.exec_driver_sql(ddl)
    return engine


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("mariadb", marks=pytest.mark.integration),
    ]
)
def split(request, tmp_path, monkeypatch):
    for name in ("DATABASE_URL", "SQL_DSN", "LOG_SQL_DSN", "LOG_DATABASE_URL", "SQLITE_PATH", "STATS_TIMEZONE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the embedded broker's files
    with two_databases(request.param, tmp_path) as (env, main_url, log_url):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        if request.param == "sqlite":
            # A standalone install: db upgrade creates new-api's tables in the main database.
            assert main(["db", "upgrade"]) == 0
            gateway = make_engine(main_url)
        else:
            # As new-api made them: users, tokens and channels in the main database,
            # logs in the other.
            gateway = newapi_tables(main_url, ("users", "tokens", "channels"))
            newapi_tables(log_url, ("logs",)).dispose()
        tokens = {
            ROOT: add_user(gateway, ROOT, "root", role=m.ROLE_ROOT),
            ALICE: add_user(gateway, ALICE, "alice"),
            BOB: add_user(gateway, BOB, "bob"),
        }
        with gateway.begin() as conn:
            conn.execute(
                sa.insert(m.tokens),
                [{"id": i, "user_id": i // 10, "key": f"k{i}", "name": n} for i, n in TOKENS.items()],
            )
            conn.execute(sa.insert(m.channels), [{"id": i, "name": n, "key": "secret"} for i, n in CHANNELS.items()])
        assert main(["db", "upgrade"]) == 0
        logs = make_engine(log_url)
        yield logs, gateway, tokens
        logs.dispose()
        gateway.dispose()
        dispose_engines()


def random_logs(rnd: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        token_id = rnd.choice(list(TOKENS))
        user = token_id // 10
        rows.append(
            log(
                user_id=user,
                username=("alice", "bob")[user - 2],
                created_at=T0 + rnd.randrange(0, 5 * 86400),
                model=rnd.choice(("gpt-4o", "claude")),
                token_id=token_id,
                token_name=f"recorded-{token_id}",
                channel=rnd.choice(list(CHANNELS)),
                group=rnd.choice(("default", "vip")),
            )
        )
    return rows


def test_logs_apart_from_users_answer_exactly(split):
    logs, gateway, tokens = split
    rnd = random.Random(4)
    rows = random_logs(rnd, 300)
    insert(logs, rows[:200])
    assert main(["rollup"]) == 0
    insert(logs, rows[200:])  # the rest only in the real-time tail
    # The rollup's tables went beside the logs, none into the gateway's database.
    assert "hourly_usage" in sa.inspect(logs).get_table_names()
    assert not {"users", "tokens", "channels"} & set(sa.inspect(logs).get_table_names())
    assert set(sa.inspect(gateway).get_table_names()) == {"users", "tokens", "channels"}

    api = Api(create_app(Settings.from_env()))
    window = {"start_timestamp": T0 - HOUR, "end_timestamp": T0 + 6 * 86400}
    raw = committed_logs(logs)
    assert len(raw) == 300
    got = ok_data(api.get("/api/data/self", tokens[ALICE], ALICE, **window))
    assert got == expected(raw, "hour", "UTC", *window.values(), user_id=ALICE) and got
    by_name = ok_data(api.get("/api/data/", tokens[ROOT], ROOT, username="bob", granularity="day", **window))
    assert by_name == expected(raw, "day", "UTC", *window.values(), user_id=BOB) and by_name
    assert ok_data(api.get("/api/data/", tokens[ROOT], ROOT, username="nobody", **window)) == []
    empty = api.get("/api/data/", tokens[ROOT], ROOT, username="nobody", format="csv", **window)
    assert empty.status_code == 200 and len(list(csv.reader(io.StringIO(empty.get_data(as_text=True))))) == 1

    # Keys and channels named from the main database, grouped sums from the logs'.
    grouped = ok_data(
        api.get("/api/data/", tokens[ROOT], ROOT, group_by="token,channel", granularity="month", **window)
    )
    sums: dict = {}
    for lg in raw:
        key = (lg["token_id"], lg["channel_id"])
        sums[key] = sums.get(key, 0) + lg["quota"]
    assert {(r["token_id"], r["channel_id"]): r["quota"] for r in grouped} == sums
    assert {(r["token_name"], r["channel_name"]) for r in grouped} == {(TOKENS[t], CHANNELS[c]) for t, c in sums}
    # A user's own keys, named, and no one else's.
    mine = ok_data(api.get("/api/data/self", tokens[BOB], BOB, group_by="token", granularity="month", **window))
    assert {r["token_name"] for r in mine} == {"bob-main"}

    stat = ok_data(api.get("/api/log/stat", tokens[ROOT], ROOT, token_name="recorded-21", start_timestamp=T0 + 17))
    assert stat["quota"] == sum(lg["quota"] for lg in raw if lg["token_id"] == 21 and lg["created_at"] >= T0 + 17)
    flow = ok_data(api.get("/api/data/flow", tokens[ROOT], ROOT, username="alice", **window))
    assert {r["user_id"] for r in flow} == {ALICE} and {r["token_name"] for r in flow} == {"alice-main", "alice-ci"}
    assert sum(r["quota"] for r in flow) == sum(lg["quota"] for lg in raw if lg["user_id"] == ALICE)

    # Who is asking is read from the main database only.
    with gateway.begin() as conn:
        conn.execute(sa.update(m.users).where(m.users.c.id == ALICE).values(status=m.STATUS_DISABLED))
    assert api.get("/api/data/self", tokens[ALICE], ALICE, **window).status_code == 403
    assert main(["status"]) == 0
    assert main(["reaggregate", "--all", "--quiet"]) == 0
    assert ok_data(api.get("/api/data/", tokens[ROOT], ROOT, username="bob", granularity="day", **window)) == by_name
