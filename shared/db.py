"""One engine per database URL, with what SQLite needs to behave like a server.

SQLite: WAL so that API reads never wait for the rollup, a busy timeout instead of
"database is locked", our own BEGIN so that a writer can ask for BEGIN IMMEDIATE
(take the write lock up front; see `write_connection`), and the usage_day_start and
usage_period_start functions that shared.buckets compiles to.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from .buckets import local_midnight, local_period_start

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """postgres:// and postgresql:// mean psycopg2, the driver we install (SQLAlchemy
    2.1 would otherwise look for psycopg 3)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}, "hide_parameters": True}
        if url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url:
            # One shared connection, or every connection would see its own empty database.
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)
        _prepare_sqlite(engine)
        return engine
    # hide_parameters: an error's text never shows bound values, such as a token.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, hide_parameters=True)


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
