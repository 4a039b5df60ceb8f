"""The job protocol (shared.jobs) on both result backends: the embedded default (SQLite
broker and result database) and Redis (integration).

- A re-aggregation is known from the moment it is enqueued, whoever enqueued it and
  whether or not a worker runs: `usage-stats reaggregate --enqueue` with no worker, then
  GET /api/data/reaggregate/<id> answers PENDING (it was a 404 until a worker picked it up,
  and forever when none ran).
- Its record goes PENDING (enqueued) -> PROGRESS (done/total) -> SUCCESS or FAILURE, read
  by one function for the API and the CLI.
- Worker heartbeats: `usage-stats status` names the running workers and their
  re-aggregations on both brokers (Celery's broadcast got no answer over the embedded one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import pytest

from api import create_app
from shared import jobs
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from tests.api_support import add_user
from tests.faults.servers import service_env, wait_until
from tests.test_worker import redis_url  # noqa: F401  (fixture)


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.integration)])
def settings(request, tmp_path) -> Settings:
    """Settings for one broker: the embedded default's shape (SQLite files, absolute paths
    here) or Redis, the result backend beside it."""
    database = f"sqlite:///{tmp_path / 'usage-stats.db'}"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return Settings(database_url=database, celery_broker_url=url, celery_result_backend=url)
    return Settings(
        database_url=database,
        celery_broker_url=f"sqla+sqlite:///{tmp_path / 'usage-stats-broker.db'}",
        celery_result_backend=f"db+sqlite:///{tmp_path / 'usage-stats-results.db'}",
    )


def env_of(settings: Settings, **extra) -> dict:
    return service_env(
        DATABASE_URL=settings.database_url,
        CELERY_BROKER_URL=settings.celery_broker_url,
        CELERY_RESULT_BACKEND=settings.celery_result_backend,
        **extra,
    )


def cli(settings: Settings, cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env=env_of(settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


class FakeTask:
    """What a bound Celery task offers report_progress: update_state on its own record."""

    def __init__(self, app, task_id: str):
        self.app, self.id = app, task_id

    def update_state(self, task_id=None, state=None, meta=None):
        self.app.backend.store_result(task_id or self.id, meta, state)


@dataclass
class Summary:
    start: int = 1_700_000_000
    end: int = 1_700_172_800
    chunks: int = 2
    logs: int = 42
    seconds: float = 0.5


# --- enqueued, running, finished ------------------------------------------------------------


def test_a_job_is_known_from_the_moment_it_is_enqueued(settings):
    app = jobs.client(settings)
    task_id = jobs.enqueue_reaggregate(app, 1_700_000_000, 1_700_086_400, 7)
    assert jobs.job_status(app, task_id) == jobs.JobStatus(id=task_id, state="PENDING")
    assert jobs.job_status(app, str(uuid.uuid4())) is None  # nobody enqueued it

    # The task itself went to the broker, by name, with its arguments.
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("celery")
        message = queue.get(timeout=10)
        message.ack()
        queue.close()
    assert message.headers["task"] == jobs.REAGGREGATE_TASK and message.headers["id"] == task_id
    assert message.payload[0] == [1_700_000_000, 1_700_086_400, 7, False]


def test_the_record_through_its_states(settings):
    app = jobs.client(settings)
    task_id = jobs.enqueue_reaggregate(app, 1_700_000_000, 1_700_172_800)
    task, started = FakeTask(app, task_id), time.time()

    jobs.report_progress(task, 0, None, started)
    assert jobs.job_status(app, task_id) == jobs.JobStatus(id=task_id, state="PROGRESS", started=started)
    jobs.report_progress(task, 1, 2, started)
    status = jobs.job_status(app, task_id)
    assert (status.state, status.done, status.total, status.started) == ("PROGRESS", 1, 2, started)

    finished = started + 0.6
    app.backend.store_result(task_id, jobs.result_record(Summary(), started, finished), "SUCCESS")
    status = jobs.job_status(app, task_id)
    assert status.as_dict() == {
        "id": task_id,
        "state": "SUCCESS",
        "done": 2,
        "total": 2,
        "started": started,
        "finished": finished,
        "error": None,
        "result": {"start": 1_700_000_000, "end": 1_700_172_800, "chunks": 2, "logs": 42, "seconds": 0.5},
    }

    failed = jobs.enqueue_reaggregate(app, 10, 5)
    app.backend.store_result(failed, ValueError("end (5) must be after start (10)\nsecond line"), "FAILURE")
    status = jobs.job_status(app, failed)
    assert status.state == "FAILURE" and status.error == "ValueError: end (5) must be after start (10)"
    assert status.finished is not None and status.started is None and status.result is None


def test_a_record_that_is_not_a_job_is_unknown():
    worker = jobs.WorkerRecord("w@h", 1, time.time()).to_json()
    assert jobs.status_of("usage-stats-worker:w@h", {"status": jobs.WORKER_STATE, "result": worker}) is None
    assert jobs.status_of("x", {"status": "PENDING", "result": None}) is None
    assert jobs.status_of("x", {"status": "PENDING", "result": {"enqueued": 1.0}}).state == "PENDING"


def test_enqueue_from_the_cli_with_no_worker_is_pending_not_404(settings, tmp_path):
    """The regression: the id `reaggregate --enqueue` prints is known to the API at once."""
    assert cli(settings, tmp_path, "db", "upgrade").returncode == 0
    enqueued = cli(settings, tmp_path, "reaggregate", "--start", "1700000000", "--end", "1700086400", "--enqueue")
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = enqueued.stdout.strip()
    assert uuid.UUID(task_id)

    engine = make_engine(settings.database_url)
    try:
        token = add_user(engine, 1, "admin", role=m.ROLE_ADMIN)
        client = create_app(settings, engine=engine).test_client()
        r = client.get(f"/api/data/reaggregate/{task_id}", headers={"Authorization": token, "New-Api-User": "1"})
        assert r.status_code == 200, r.get_data(as_text=True)
        data = r.get_json()["data"]
        assert data["id"] == task_id and data["state"] == "PENDING" and data["done"] == 0
    finally:
        engine.dispose()


def test_enqueue_with_the_broker_down_is_one_clear_line(tmp_path):
    dead = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'u.db'}", celery_broker_url=dead, celery_result_backend=dead
    )
    assert cli(settings, tmp_path, "db", "upgrade").returncode == 0
    r = cli(settings, tmp_path, "reaggregate", "--start", "1700000000", "--end", "1700086400", "--enqueue")
    assert r.returncode == 1 and "task queue unavailable" in r.stderr and "Traceback" not in r.stderr, r.stderr
    with pytest.raises(jobs.QueueUnavailable) as raised:
        jobs.enqueue_reaggregate(jobs.client(settings), 1, 2)
    assert raised.value.what == "result backend"


# --- worker heartbeats ------------------------------------------------------------------------


def test_heartbeats_say_which_workers_run_and_what(settings):
    app = jobs.client(settings)
    records = jobs.worker_records(app)
    now = time.time()
    records.put(jobs.WorkerRecord("silent@test", 1, now - 2 * jobs.WORKER_SILENT_AFTER))
    records.put(jobs.WorkerRecord("gone@test", 2, now - 2 * jobs.WORKER_FORGOTTEN_AFTER))
    assert jobs.workers(app) == []  # neither has written lately

    running: list[jobs.RunningJob] = []
    beat = jobs.Heartbeat(settings, "w1@test", running=lambda: list(running))
    beat.start()
    try:
        alive = wait_until(lambda: jobs.workers(app), 10, "the first heartbeat")
        assert [(w.node, w.pid, w.running) for w in alive] == [("w1@test", os.getpid(), [])]
        # Records of workers silent for a day are deleted when a worker starts.
        wait_until(lambda: "gone@test" not in {r.node for r in records.all()}, 10, "the old record to go")
        assert "silent@test" in {r.node for r in records.all()}

        job = jobs.RunningJob("job-1", [1_700_000_000, 1_700_086_400, None], now)
        running.append(job)  # written at once, not at the next beat
        alive = wait_until(lambda: [w for w in jobs.workers(app) if w.running], 5, "the running job")
        assert alive[0].running == [job]
    finally:
        beat.stop()
    assert jobs.workers(app) == []  # a stopped worker deletes its record


def status_lines(settings: Settings, cwd) -> dict[str, str]:
    r = cli(settings, cwd, "status")
    assert r.returncode == 0, r.stderr
    return {line.split(":", 1)[0].strip(): line for line in r.stdout.splitlines()} | {"": r.stdout}


# A real worker process on each broker: integration, also on the embedded one.
@pytest.mark.integration
def test_status_names_a_running_worker_on_both_brokers(settings, tmp_path):
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    lines = status_lines(settings, tmp_path)
    assert "none (no heartbeat" in lines["workers"], lines[""]
    assert "re-aggregations running: none (no worker runs)" in lines[""]

    node = f"w{uuid.uuid4().hex[:8]}@test"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "solo", "-n", node, "-l", "INFO"],
        env=env_of(settings),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        lines = wait_until(
            lambda: (s := status_lines(settings, tmp_path)) and node in s["workers"] and s, 60, "the worker in status"
        )
        assert lines["workers"].startswith("workers:      1: ") and "no worker answered" not in lines[""]
        assert "re-aggregations running: none" in lines[""]

        # A re-aggregation another worker runs, with its progress from the job's record
        # (not enqueued: the real worker would take it).
        app = jobs.client(settings)
        task_id = str(uuid.uuid4())
        jobs.report_progress(FakeTask(app, task_id), 2, 7, time.time())
        running = [jobs.RunningJob(task_id, [1_700_000_000, 1_700_604_800, 3], time.time())]
        beat = jobs.Heartbeat(settings, "busy@test", running=lambda: running)
        beat.start()
        try:
            lines = wait_until(
                lambda: (s := status_lines(settings, tmp_path)) and "busy@test" in s["workers"] and s, 20, "busy@test"
            )
        finally:
            beat.stop()
        assert lines["workers"].startswith("workers:      2: ")
        assert "re-aggregations running: 1" in lines[""]
        assert f"{task_id} [1700000000, 1700604800) user 3: 2/7 chunks on busy@test" in lines[""]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    # A worker that stopped is gone at once (it deletes its record on the way out).
    lines = status_lines(settings, tmp_path)
    assert "none (no heartbeat" in lines["workers"], lines[""]
