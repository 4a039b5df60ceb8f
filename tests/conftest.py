"""Fixtures: SQLite in memory for unit tests, a throwaway PostgreSQL and MariaDB (or MySQL)
database for integration tests (marked `integration`, as are the few tests too long for
the fast default, `pytest -m "not integration"`).

PostgreSQL is found at TEST_POSTGRES_URL (default: the machine's server, trust auth),
MariaDB or MySQL at TEST_MYSQL_URL (default: root without a password on 127.0.0.1:3306).
Without them, integration tests skip locally; with USAGE_STATS_REQUIRE_SERVICES=1 (set by
.ci/run) every skipped integration test is turned into a failure, so CI can never pass
while silently not testing the real database.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from shared import models
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
ADMIN_URLS = {"postgresql": PG_ADMIN_URL, "mysql": MYSQL_ADMIN_URL}
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("USAGE_STATS_REQUIRE_SERVICES") == "1"

OUR_TABLES = (
    "hourly_usage",
    "daily_usage",
    "hourly_model_usage",
    "daily_model_usage",
    "hourly_detail_usage",
    "rollup_gap",
    "rollup_chunk",
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (
        REQUIRE_SERVICES
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("integration")
    ):
        report.outcome = "failed"
        report.longrepr = f"integration test skipped while USAGE_STATS_REQUIRE_SERVICES=1: {report.longrepr}"


def reset(engine) -> None:
    """Empty every table and put the rollup back at the start."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{n}"' for n in ("logs", "users", "tokens", "channels") + OUR_TABLES)
            conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY")
        elif engine.dialect.name == "mysql":
            # TRUNCATE also starts AUTO_INCREMENT again at 1.
            for name in ("logs", "users", "tokens", "channels") + OUR_TABLES:
                conn.exec_driver_sql(f"TRUNCATE TABLE `{name}`")
        else:
            for name in ("logs", "users", "tokens", "channels") + OUR_TABLES:
                conn.exec_driver_sql(f'DELETE FROM "{name}"')
            conn.exec_driver_sql("DELETE FROM sqlite_sequence")
        conn.execute(
            sa.update(models.rollup_state).values(last_log_id=0, timezone=None, last_tick_at=None, hours_kept_from=None)
        )


@pytest.fixture
def settings() -> Settings:
    return Settings(database_url="sqlite://", stats_timezone="UTC")


@pytest.fixture
def sqlite_engine():
    engine = make_engine("sqlite://")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_file_url(tmp_path):
    """A SQLite file (WAL), for tests that need several connections at once."""
    return f"sqlite:///{tmp_path / 'usage.db'}"


@contextmanager
def throwaway_database(prefix: str, dialect: str = "postgresql"):
    """The URL of a new, empty PostgreSQL (or MariaDB/MySQL: `dialect="mysql"`) database,
    dropped on exit; skips the test when the server cannot be reached. A MySQL database
    gets the server's default character set and collation, as a gateway's would."""
    admin_url = ADMIN_URLS[dialect]
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    quoted = f"`{name}`" if dialect == "mysql" else f'"{name}"'
    try:
        admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
    except sa.exc.OperationalError as exc:
        pytest.skip(f"{dialect} not reachable at {admin_url}: {exc.orig}")
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if dialect == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}{force}")
        admin.dispose()


@contextmanager
def migrated_database(dialect: str):
    """The URL of a fresh database of `dialect` for a test session, migrated, dropped at the end."""
    with throwaway_database("usage_stats_test", dialect) as url:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url


@contextmanager
def reset_engine(url: str):
    """An engine on the session's database, every table emptied first."""
    engine = make_engine(url)
    reset(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_url():
    with migrated_database("postgresql") as url:
        yield url


@pytest.fixture
def pg_engine(pg_url):
    with reset_engine(pg_url) as engine:
        yield engine


@pytest.fixture(scope="session")
def mysql_url():
    """MariaDB (or MySQL)."""
    with migrated_database("mysql") as url:
        yield url


@pytest.fixture
def mysql_engine(mysql_url):
    with reset_engine(mysql_url) as engine:
        yield engine


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.integration),
        pytest.param("mariadb", marks=pytest.mark.integration),
    ]
)
def engine(request):
    """The same test on the embedded default, on PostgreSQL and on MariaDB."""
    fixture = {"sqlite": "sqlite_engine", "postgresql": "pg_engine", "mariadb": "mysql_engine"}[request.param]
    return request.getfixturevalue(fixture)
