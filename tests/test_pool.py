"""The pool's ping (shared.db): a connection is checked before use only after it sat idle
PING_AFTER_IDLE seconds. A connection the server dropped while it was idle that long is
replaced at checkout, and the caller never sees the failure; one reused within the
window costs no round trip. PostgreSQL and MariaDB."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from shared import db

pytestmark = pytest.mark.integration


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request):
    return request.getfixturevalue({"postgresql": "pg_engine", "mariadb": "mysql_engine"}[request.param])


def backend_id(conn) -> int:
    sql = "SELECT pg_backend_pid()" if conn.dialect.name == "postgresql" else "SELECT CONNECTION_ID()"
    return int(conn.exec_driver_sql(sql).scalar_one())


def kill(engine, backend: int) -> None:
    with db.make_engine(engine.url.render_as_string(hide_password=False)).connect() as admin:
        if engine.dialect.name == "postgresql":
            assert admin.execute(sa.select(sa.func.pg_terminate_backend(backend))).scalar_one()
        else:
            admin.exec_driver_sql(f"KILL {backend}")
    time.sleep(0.2)  # the backend exits asynchronously


def test_a_connection_dropped_while_idle_is_replaced_at_checkout(server, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.3)
    engine = db.make_engine(server.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        first = backend_id(conn)
    kill(server, first)
    time.sleep(0.3)
    with engine.connect() as conn:  # pinged (idle past the window): the dead one is replaced
        second = backend_id(conn)
    assert second != first
    engine.dispose()


def test_a_connection_reused_within_the_window_is_not_pinged(server, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 60.0)
    engine = db.make_engine(server.url.render_as_string(hide_password=False))
    pings = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(1) or real_ping(c))
    for _ in range(3):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    assert pings == []
    monkeypatch.setattr(db, "PING_AFTER_IDLE", 0.0)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert pings == [1]
    engine.dispose()
