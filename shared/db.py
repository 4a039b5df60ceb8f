"""One engine per database URL, with what SQLite needs to behave like a server.

PostgreSQL and MySQL: a pooled connection is pinged before use only after it sat idle
in the pool for PING_AFTER_IDLE seconds (`_ping_when_idle`, HikariCP's bypass window),
not at every checkout: with psycopg2 SQLAlchemy's pre-ping costs two round trips (the
SELECT 1 and a SET of the isolation level after it), more than a conditional API
request's own one or two statements. A connection reused within the window was alive a moment
ago; if the server went away meanwhile, its next statement fails as a disconnect,
SQLAlchemy then retires every connection of the pool opened before, and the request
fails as one issued during the outage would (the API answers 503).

MySQL and MariaDB (`mysql://`, PyMySQL; see `mysql_connect_args`): utf8mb4, a strict
sql_mode, UTC as the session time zone, READ COMMITTED (shared.rollup says why).

SQLite: WAL so that API reads never wait for the rollup, a busy timeout instead of
"database is locked", our own BEGIN so that a writer can ask for BEGIN IMMEDIATE
(take the write lock up front; see `write_connection`), and the usage_day_start and
usage_period_start functions that shared.buckets compiles to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from .buckets import local_midnight, local_period_start

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


# The drivers we install, for URLs that name none.
_DEFAULT_DRIVERS = {
    # SQLAlchemy 2.1 would otherwise look for psycopg 3.
    "postgres://": "postgresql+psycopg2://",
    "postgresql://": "postgresql+psycopg2://",
    # PyMySQL: pure Python, installs from its wheel on any machine (mysqlclient needs the
    # MySQL client headers and a compiler); `mysql+mysqldb://` still selects mysqlclient.
    "mysql://": "mysql+pymysql://",
    "mariadb://": "mysql+pymysql://",
}

# STRICT_ALL_TABLES: a value that does not fit is an error, not a silent truncation;
# NO_BACKSLASH_ESCAPES is left out (PyMySQL escapes with backslashes); ANSI_QUOTES too,
# so that new-api's own backquoted DDL and ours read the same.
MYSQL_SQL_MODE = "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,ONLY_FULL_GROUP_BY"


def normalize_url(url: str) -> str:
    """A URL without a driver gets the one we install: psycopg2 for postgres:// and
    postgresql://, PyMySQL for mysql:// and mariadb://. mariadb+<driver>:// becomes
    mysql+<driver>:// (one dialect: MariaDB is told apart by its version)."""
    for prefix, full in _DEFAULT_DRIVERS.items():
        if url.startswith(prefix):
            return full + url[len(prefix) :]
    if url.startswith("mariadb+"):
        return "mysql+" + url[len("mariadb+") :]
    return url


def mysql_connect_args(url_init_command: str | None = None) -> dict[str, Any]:
    """Every MySQL connection: utf8mb4 (new-api's character set), a strict sql_mode, and
    UTC as the session time zone, so that DATETIME values (rollup_gap's, innodb_trx's)
    are UTC whatever the server's zone, with no time zone tables needed. The URL's own
    init_command (the session variables of new-api's SQL_DSN: shared.dsn) runs first,
    so these two win where both set them."""
    ours = f"SET SESSION sql_mode = '{MYSQL_SQL_MODE}', SESSION time_zone = '+00:00'"
    if url_init_command:
        ours = f"{url_init_command.removesuffix(';')}, {ours.removeprefix('SET ')}"
    return {"charset": "utf8mb4", "init_command": ours}


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        lite: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}, "hide_parameters": True}
        if url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url:
            # One shared connection, or every connection would see its own empty database.
            lite["poolclass"] = StaticPool
        engine = create_engine(url, **lite)
        _prepare_sqlite(engine)
        return engine
    # hide_parameters: an error's text never shows bound values, such as a token.
    kwargs: dict[str, Any] = {"pool_size": 5, "max_overflow": 10, "hide_parameters": True}
    if url.startswith("mysql"):
        # READ COMMITTED: every INSERT ... SELECT from logs is then a consistent read that
        # takes no lock on the gateway's rows (shared.rollup). pool_recycle: the server
        # drops connections idle for wait_timeout (8 hours by default).
        parsed = make_url(url)
        init = parsed.query.get("init_command")
        kwargs.update(
            connect_args=mysql_connect_args(init if isinstance(init, str) else None),
            isolation_level="READ COMMITTED",
            pool_recycle=3600,
        )
        return _ping_when_idle(create_engine(parsed.difference_update_query(["init_command"]), **kwargs))
    return _ping_when_idle(create_engine(url, **kwargs))


# Seconds a pooled connection may sit idle and still be used without a ping.
PING_AFTER_IDLE = 1.0


def _ping_when_idle(engine: Engine) -> Engine:
    """Ping a connection at checkout when it has been idle PING_AFTER_IDLE seconds or
    more; a dead one is replaced (DisconnectionError: the pool connects anew, as with
    pool_pre_ping). See the module's docstring."""

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as e:
            if engine.dialect.is_disconnect(e, dbapi_conn, None):
                raise exc.DisconnectionError() from e
            raise

    return engine


def get_engine(url: str) -> Engine:
    """The process's engine for `url`, made once."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engines() -> None:
    """Forget every engine (after fork, or between tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the database's write lock from its first statement
    on SQLite (BEGIN IMMEDIATE), so that read-then-write never fails halfway; on
    PostgreSQL an ordinary transaction."""
    with engine.connect() as conn:
        conn = conn.execution_options(sqlite_begin_immediate=True)
        with conn.begin():
            yield conn


def _prepare_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling cannot do BEGIN IMMEDIATE; we emit BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
        dbapi_conn.create_function("usage_day_start", 2, local_midnight, deterministic=True)
        dbapi_conn.create_function("usage_period_start", 3, local_period_start, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_begin_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
