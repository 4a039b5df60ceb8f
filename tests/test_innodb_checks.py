"""What would break the exactly-once argument on InnoDB is refused, with the fix in the
message (shared.rollup.check_innodb), and the fix works. MariaDB, integration."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from shared.rollup import RollupError, tick
from tests.conftest import MYSQL_ADMIN_URL, throwaway_database
from tests.logdata import insert, log

pytestmark = pytest.mark.integration


@pytest.fixture
def mysql_db():
    with throwaway_database("usage_stats_checks", "mysql") as url:
        engine = make_engine(url)
        upgrade(engine)
        insert(engine, [log(created_at=1_700_000_000)])
        yield url, engine
        engine.dispose()


def test_without_the_process_privilege_a_tick_says_to_grant_it(mysql_db):
    url, _ = mysql_db
    user = f"us_{uuid.uuid4().hex[:8]}"
    database = sa.engine.make_url(url).database
    admin = make_engine(MYSQL_ADMIN_URL)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'pw'")
            conn.exec_driver_sql(f"GRANT ALL ON `{database}`.* TO '{user}'@'%%'")
        limited = make_engine(sa.engine.make_url(url).set(username=user, password="pw").render_as_string(False))
        settings = Settings(database_url=url)
        with pytest.raises(RollupError, match=r"GRANT PROCESS ON \*\.\* TO"):
            tick(limited, settings)
        with admin.begin() as conn:
            conn.exec_driver_sql(f"GRANT PROCESS ON *.* TO '{user}'@'%%'")
        limited.dispose()
        assert tick(limited, settings).logs == 1
        limited.dispose()
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'%%'")
        admin.dispose()


def test_logs_not_on_innodb_are_refused(mysql_db):
    url, engine = mysql_db
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE logs ENGINE=Aria")
    with pytest.raises(RollupError, match="ALTER TABLE logs ENGINE=InnoDB"):
        tick(engine, Settings(database_url=url))
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE logs ENGINE=InnoDB")
    assert tick(engine, Settings(database_url=url)).logs == 1
