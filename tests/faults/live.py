"""A running API with data: a throwaway PostgreSQL (or MariaDB: `dialect="mysql"`)
database with users of every kind and rolled-up logs, served by gunicorn (the production
server and configuration) on a free port. For the bad-input catalogue, the fuzzer and the
security tests."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from shared.rollup import rollup
from tests.api_support import add_user
from tests.conftest import REDIS_URL, throwaway_database
from tests.faults.servers import free_port, gunicorn, running, service_env, wait_http
from tests.logdata import insert, log

T0 = 1_700_000_000 - 1_700_000_000 % 86400  # a UTC midnight
# id, username, role, status, deleted
PEOPLE = {
    "alice": (1, "alice", m.ROLE_USER, m.STATUS_ENABLED, False),
    "bob": (2, "bob", m.ROLE_USER, m.STATUS_ENABLED, False),
    "admin": (3, "admin", m.ROLE_ADMIN, m.STATUS_ENABLED, False),
    "root": (4, "root", m.ROLE_ROOT, m.STATUS_ENABLED, False),
    "carol": (5, "carol", m.ROLE_USER, m.STATUS_DISABLED, False),
    "fallen": (6, "fallen", m.ROLE_ROOT, m.STATUS_DISABLED, False),
    "ghost": (7, "ghost", m.ROLE_USER, m.STATUS_ENABLED, True),
}
# Quotas no one else has, to spot a user's rows in any answer.
SECRET_QUOTA = {"alice": 111_111, "bob": 222_223}


@dataclass
class LiveApi:
    port: int
    url: str
    tokens: dict
    engine: object
    server: object
    window: dict

    def headers(self, who: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[who]}", "New-Api-User": str(PEOPLE[who][0])}


@contextmanager
def live_api(prefix: str = "usage_stats_live", workers: int = 1, dialect: str = "postgresql", **env):
    with throwaway_database(prefix, dialect) as url:
        engine = make_engine(url)
        upgrade(engine)
        tokens = {
            name: add_user(engine, uid, uname, role=role, status=status, deleted=deleted)
            for name, (uid, uname, role, status, deleted) in PEOPLE.items()
        }
        rows = []
        for name, (uid, uname, *_rest) in PEOPLE.items():
            for k in range(6):
                rows.append(
                    log(
                        user_id=uid,
                        username=uname,
                        created_at=T0 + k * 3600 + 60 * uid,
                        model=("gpt-4o", "deepseek-chat")[k % 2],
                        quota=SECRET_QUOTA.get(name, 1000 + uid) if k == 0 else 10 + k,
                    )
                )
        insert(engine, rows)
        rollup(engine, Settings(database_url=url, stats_timezone="UTC"))
        folder = Path(tempfile.mkdtemp(prefix="usage-stats-live-"))
        port = free_port()
        server = gunicorn(
            folder,
            service_env(DATABASE_URL=url, CELERY_BROKER_URL=REDIS_URL, STATS_TIMEZONE="UTC", **env),
            port,
            workers=workers,
        )
        try:
            with running(server):
                wait_http(port)
                yield LiveApi(
                    port, url, tokens, engine, server, {"start_timestamp": T0 - 86400, "end_timestamp": T0 + 2 * 86400}
                )
        finally:
            engine.dispose()
            shutil.rmtree(folder, ignore_errors=True)
