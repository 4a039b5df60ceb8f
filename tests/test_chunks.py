"""A re-aggregation's chunks shared by several workers (shared.chunks), on PostgreSQL and
MariaDB: helpers beside the job, with ticks and writers running; a helper killed with
SIGKILL while it aggregates a chunk, and while it writes one (its transaction open under
the rollup's lock): the job takes the chunk over, and the summary tables end equal to a
GROUP BY over the raw logs, with no chunk row left behind.

The helpers are threads, or a process of their own for the kills (the product's code,
shared.chunks.work, on a connection of its own: the lock it holds dies with it).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from shared import aggregation as agg
from shared import chunks, jobs
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.rollup import rollup, tick
from tests.logdata import assert_exact, at, insert, log
from tests.test_worker import _stop, redis_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

TZ = "Asia/Kolkata"  # half-hour midnights: neighbouring chunks share the straddling hours
START = at(TZ, 2024, 3, 1)
DAYS = 6
END = START + DAYS * 86400
STUCK = 60  # seconds before a child or thread counts as stuck (a hang detector)


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request):
    return request.getfixturevalue({"postgresql": "pg_engine", "mariadb": "mysql_engine"}[request.param])


def cfg(engine) -> Settings:
    return Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=TZ)


def history(engine, seed: int = 7) -> None:
    """Logs over the days, rolled up, then the finest table damaged (a user's rows gone,
    every quota off by one), so that every chunk has rows to write."""
    rnd = random.Random(seed)
    insert(
        engine,
        [
            log(user_id=rnd.randrange(1, 5), model=rnd.choice("abc"), created_at=START + rnd.randrange(DAYS * 86400))
            for _ in range(400)
        ],
    )
    rollup(engine, cfg(engine))
    finest = agg.SUMMARIES[0].table
    with engine.begin() as conn:
        conn.execute(sa.delete(finest).where(finest.c.user_id == 2))
        conn.execute(sa.update(finest).values(quota=finest.c.quota + 1))


def chunk_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(m.rollup_chunk)).scalar_one()


def test_helpers_share_the_chunks_beside_ticks_and_writers(server):
    history(server)
    s = cfg(server)
    ran: list[int] = []
    threads: list[threading.Thread] = []
    stop = threading.Event()

    def share(job: str, n: int) -> None:
        for _ in range(2):
            t = threading.Thread(target=lambda: ran.append(chunks.work(server, s, job)), daemon=True)
            t.start()
            threads.append(t)

    def write_and_tick() -> None:
        rnd = random.Random(3)
        while not stop.is_set():
            insert(server, log(user_id=rnd.randrange(1, 5), created_at=START + rnd.randrange(DAYS * 86400)))
            tick(server, s)

    writer = threading.Thread(target=write_and_tick, daemon=True)
    writer.start()
    try:
        result = chunks.run_job(server, s, str(uuid.uuid4()), START, END, share=share)
    finally:
        stop.set()
        writer.join(STUCK)
    for t in threads:
        t.join(STUCK)
    assert not writer.is_alive() and not any(t.is_alive() for t in threads)
    assert result.chunks == DAYS
    assert len(ran) == 2  # both helpers came back (how many chunks each ran is up to timing)
    assert chunk_rows(server) == 0
    rollup(server, s)
    assert_exact(server, TZ)


def _helper(url: str, job: str, phase: str, ready) -> None:
    """A helper process that stops, for good, in the middle of its first chunk: after its
    aggregation ("aggregating": before it asks for the rollup's lock), or after writing the
    chunk's rows, before the commit ("writing")."""
    import shared.rollup as rollup_module

    def stall(*_args, **_kwargs):
        ready.put(phase)
        time.sleep(3600)

    if phase == "aggregating":
        rollup_module.exclusive_on = stall  # type: ignore[assignment]
    else:
        real = rollup_module._write_change

        def write_then_stall(*args, **kwargs):
            real(*args, **kwargs)
            stall()

        rollup_module._write_change = write_then_stall  # type: ignore[assignment]
    engine = make_engine(url)
    chunks.work(engine, Settings(database_url=url, stats_timezone=TZ), job)


@pytest.mark.parametrize("phase", ["aggregating", "writing"])
def test_a_helper_killed_mid_chunk(server, phase):
    history(server)
    s = cfg(server)
    job = str(uuid.uuid4())
    assert chunks.plan(server, s, job, START, END, None, False) == DAYS
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    child = ctx.Process(target=_helper, args=(s.database_url, job, phase, ready), daemon=True)
    child.start()
    try:
        assert ready.get(timeout=STUCK) == phase
        with server.connect() as conn:
            first = conn.execute(sa.select(sa.func.min(m.rollup_chunk.c.lo))).scalar_one()
        with chunks.holding(server, job, first) as held:
            assert not held, "the helper holds its chunk while it runs"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(STUCK)
    assert child.exitcode == -signal.SIGKILL
    result = chunks.run_job(server, s, job, START, END)  # the job, delivered again, takes it over
    assert result.chunks == DAYS
    assert chunk_rows(server) == 0
    assert_exact(server, TZ)


def test_two_real_workers_share_a_job(pg_engine, pg_url, redis_url, tmp_path):
    """Two Celery workers (solo pools, processes of their own): the one that takes the job
    asks for a helper, and the other runs the help task; the rows end exact."""
    history(pg_engine)
    env = dict(os.environ, DATABASE_URL=pg_url, CELERY_BROKER_URL=redis_url, STATS_TIMEZONE=TZ)
    env.update(ROLLUP_INTERVAL_SECONDS="3600", REAGGREGATE_WORKERS="2")
    env.pop("CELERY_RESULT_BACKEND", None)
    logs = [tmp_path / f"w{n}.log" for n in (1, 2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "worker",
                "--pool",
                "solo",
                "-n",
                f"w{n}@%h",
                "-l",
                "INFO",
            ],
            env=env,
            cwd=tmp_path,
            stdout=out.open("w"),
            stderr=subprocess.STDOUT,
        )
        for n, out in zip((1, 2), logs, strict=True)
    ]
    try:
        settings = Settings.from_env(env)
        app = jobs.client(settings)
        job = jobs.enqueue_reaggregate(app, START, END)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = jobs.job_status(app, job)
            if status is not None and status.state in jobs.FINISHED_STATES:
                break
            time.sleep(0.2)
        assert status is not None and status.state == "SUCCESS", status
        assert status.result is not None and status.result["chunks"] == DAYS
        # The help task is received and finishes on the other worker (the job's worker is
        # busy with the job: one task at a time in a solo pool).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            texts = [p.read_text() for p in logs]
            if any("reaggregate_help" in t and "succeeded" in t.split("reaggregate_help", 1)[1] for t in texts):
                break
            time.sleep(0.2)
        ran_job = [jobs.REAGGREGATE_TASK + "[" in t for t in texts]
        ran_help = [jobs.REAGGREGATE_HELP_TASK + "[" in t for t in texts]
        assert sorted(zip(ran_job, ran_help, strict=True)) == [(False, True), (True, False)], texts
    finally:
        for p in procs:
            _stop(p)
    assert chunk_rows(pg_engine) == 0
    assert_exact(pg_engine, TZ)
