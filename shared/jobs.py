"""The job protocol between the API, the CLI and the worker, in one place.

- Task names: the worker registers its tasks under them, beat schedules them, and the API
  and the CLI send them by name (so that neither imports the worker).
- The Celery app (`celery_app`): broker, result backend and serialisation from Settings,
  the same for every process; the worker adds its own settings and its tasks on top.
  `client` is the same app for processes that only send tasks and read their records:
  it fails fast when the broker or the result backend is down.
- A re-aggregation job: `enqueue_reaggregate` writes an "enqueued" PENDING marker to the
  result backend before it sends the task, so that the job's status is known whether or
  not a worker runs; the task writes its progress (`report_progress`: state PROGRESS,
  meta done / total / started) and returns `result_record` (the same, plus the range done,
  the logs counted and `finished`); `job_status` reads one record and tells a queued,
  running or finished job from an id nobody enqueued.
- A re-aggregation's chunks are shared (shared.chunks): its task asks for
  REAGGREGATE_WORKERS - 1 helpers (`ask_for_helpers`), tasks that run chunks of its job
  until none is left; only the job's own task writes its record.
- Worker heartbeats: every worker writes, every HEARTBEAT_SECONDS (and at once when its
  running re-aggregations change), a record of itself and of the re-aggregations it runs
  to the result backend (`Heartbeat`); `usage-stats status` reads them (`workers`).
  Celery's broadcast (`inspect active`) gets no answer over the embedded SQLAlchemy
  broker, which has no fanout, and waits a whole timeout for the answers on Redis.
  Records live in a Redis hash (Redis result backend) or in the result table, one row per
  worker (database result backend).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from celery import Celery

from .config import Settings

log = logging.getLogger("usage_stats.jobs")

ROLLUP_TASK = "usage_stats.rollup"
REAGGREGATE_TASK = "usage_stats.reaggregate"
# A worker helping with another's re-aggregation: runs its chunks (shared.chunks).
REAGGREGATE_HELP_TASK = "usage_stats.reaggregate_help"
RETENTION_TASK = "usage_stats.retention"

PENDING = "PENDING"
PROGRESS = "PROGRESS"
FINISHED_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
# The states a re-aggregation's record goes through (Celery's, plus PROGRESS). A record in
# any other state (a worker's heartbeat) is not a job.
JOB_STATES = frozenset({PENDING, "RECEIVED", "STARTED", PROGRESS, "RETRY"}) | FINISHED_STATES

HEARTBEAT_SECONDS = 2.0
# A worker whose last heartbeat is older than this is not counted as running.
WORKER_SILENT_AFTER = 5 * HEARTBEAT_SECONDS
# Records of workers silent for this long are deleted when a worker starts.
WORKER_FORGOTTEN_AFTER = 86400.0
WORKER_STATE = "WORKER"
WORKER_RECORD_PREFIX = "usage-stats-worker:"
WORKERS_HASH = "usage-stats-workers"


class QueueUnavailable(Exception):
    """The broker or the result backend cannot be reached; `what` says which."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what} unreachable: {type(cause).__name__}")
        self.what = what
        self.cause = cause


def connection_errors() -> tuple[type[BaseException], ...]:
    """What sending a task or reading a record raises when the broker or the result
    backend is down (kombu, redis-py, the socket, Celery's backend errors)."""
    from celery.exceptions import BackendError
    from kombu.exceptions import OperationalError as KombuOperationalError

    errors: list[type[BaseException]] = [KombuOperationalError, OSError, TimeoutError, BackendError]
    try:
        import redis

        errors += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:
        pass
    try:
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.OperationalError)  # a database result backend
    except ImportError:
        pass
    return tuple(errors)


# --- the Celery app ----------------------------------------------------------------------


def celery_app(settings: Settings, *, set_as_current: bool = True) -> Celery:
    """The Celery app every process shares: transport, result backend, serialisation.
    The worker (worker.app) adds its own settings and beat's schedule."""
    app = Celery(
        "usage_stats",
        broker=settings.celery_broker_url,
        backend=settings.celery_result_backend,
        set_as_current=set_as_current,
    )
    app.conf.update(
        usage_stats_settings=settings,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        # Records carry the task's name, arguments and worker.
        result_extended=True,
    )
    return app


def client(settings: Settings, *, connect_timeout: float = 3.0) -> Celery:
    """A Celery app for processes that send tasks and read records (the API, the CLI):
    a dead broker or result backend is an error within about `connect_timeout` seconds
    (QueueUnavailable from the functions here), not a retry loop."""
    app = celery_app(settings, set_as_current=False)
    retry_once = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
    app.conf.update(
        broker_connection_timeout=connect_timeout,
        broker_connection_retry=False,
        # kombu's own reconnect loop (seconds on a refused connection): one retry.
        broker_transport_options={**(app.conf.broker_transport_options or {}), **retry_once},
        redis_socket_connect_timeout=connect_timeout,
        redis_socket_timeout=10,
        redis_retry_on_timeout=False,
        result_backend_transport_options={
            **(app.conf.result_backend_transport_options or {}),
            "retry_policy": retry_once,
        },
        # The database result backend retries three times by default.
        result_backend_always_retry=False,
        result_backend_max_retries=1,
    )
    # Senders poll a job's record and never wait on a result, so they need no result
    # subscription on send; on Redis that subscription would retry a dead server for a
    # long while instead of failing fast.
    app.backend.on_task_call = lambda *args, **kwargs: None
    return app


# --- re-aggregation jobs -----------------------------------------------------------------


def enqueue_reaggregate(
    app: Celery, start: int, end: int, user_id: int | None = None, *, check_every_table: bool = False
) -> str:
    """Hand a re-aggregation of [start, end) to the workers; returns its id.

    The "enqueued" marker (a PENDING record) is written before the task is sent: a status
    read then knows the job whether or not a worker has picked it up, and the worker's
    own states, written later, replace the marker rather than the other way round."""
    task_id = str(uuid.uuid4())
    errors = connection_errors()
    try:
        app.backend.store_result(task_id, {"done": 0, "total": None, "enqueued": time.time()}, PENDING)
    except errors as e:
        raise QueueUnavailable("result backend", e) from e
    try:
        app.send_task(REAGGREGATE_TASK, args=[start, end, user_id, check_every_table], task_id=task_id, retry=False)
    except errors as e:
        try:
            app.backend.forget(task_id)
        except Exception:  # the marker expires with the results anyway
            pass
        raise QueueUnavailable("broker", e) from e
    return task_id


def ask_for_helpers(app: Celery, job: str, helpers: int) -> None:
    """Send `helpers` help tasks for a running re-aggregation `job` (from its worker).
    A help task that arrives after the job's chunks are all taken finds nothing and ends."""
    for _ in range(helpers):
        app.send_task(REAGGREGATE_HELP_TASK, args=[job])


def enqueue_rollup(app: Celery) -> str:
    """One rollup run, now (beat's first comes only after one interval)."""
    try:
        return str(app.send_task(ROLLUP_TASK, retry=False).id)
    except connection_errors() as e:
        raise QueueUnavailable("broker", e) from e


class _UpdatesState(Protocol):
    def update_state(self, task_id: str | None = ..., state: str | None = ..., meta: Any = ...) -> None: ...


class ReaggregateSummary(Protocol):
    start: int
    end: int
    chunks: int
    logs: int
    seconds: float


def report_progress(task: _UpdatesState, done: int, total: int | None, started: float) -> None:
    """The running task's record: state PROGRESS, `done` of `total` chunks since `started`."""
    task.update_state(state=PROGRESS, meta={"done": done, "total": total, "started": started})


def result_record(result: ReaggregateSummary, started: float, finished: float) -> dict[str, Any]:
    """What a finished re-aggregation task returns (its SUCCESS record)."""
    return {
        "start": result.start,
        "end": result.end,
        "chunks": result.chunks,
        "logs": result.logs,
        "seconds": result.seconds,
        "done": result.chunks,
        "total": result.chunks,
        "started": started,
        "finished": finished,
    }


RESULT_FIELDS = ("start", "end", "chunks", "logs", "seconds")


@dataclass(frozen=True)
class JobStatus:
    """A re-aggregation as its record tells it (GET /api/data/reaggregate/<id>)."""

    id: str
    state: str
    done: int = 0
    total: int | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_status(app: Celery, task_id: str) -> JobStatus | None:
    """The job's status from one read of its record; None for an id nobody enqueued (or
    whose record expired). Raises QueueUnavailable when the result backend is down."""
    try:
        # One read: AsyncResult.state and .info would be two, and a worker moving the job
        # from the marker to PROGRESS in between made a live job look unknown.
        record = app.backend.get_task_meta(task_id)
    except connection_errors() as e:
        raise QueueUnavailable("result backend", e) from e
    return status_of(task_id, record)


def status_of(task_id: str, record: dict[str, Any]) -> JobStatus | None:
    state, info = record.get("status", PENDING), record.get("result")
    if state not in JOB_STATES:
        return None
    if state == PENDING and not (isinstance(info, dict) and "enqueued" in info):
        return None  # Celery's answer for any id it has no record of
    finished = _timestamp(record.get("date_done")) if state in FINISHED_STATES else None
    if isinstance(info, dict):
        success = state == "SUCCESS"
        return JobStatus(
            id=task_id,
            state=state,
            done=info.get("done", 0),
            total=info.get("total"),
            started=info.get("started"),
            finished=info.get("finished", finished) if success else finished,
            result={k: info.get(k) for k in RESULT_FIELDS} if success else None,
        )
    error = _error_text(info) if state in ("FAILURE", "REVOKED") and info is not None else None
    return JobStatus(id=task_id, state=state, finished=finished, error=error)


def _timestamp(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):  # date_done as a key-value backend stores it (ISO 8601, UTC)
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
    return float(value) if isinstance(value, (int, float)) else None


def _error_text(exc: object) -> str:
    """The error's type and first line; Celery keeps only the exception of a failure."""
    if isinstance(exc, BaseException):
        lines = str(exc).strip().splitlines()
        return type(exc).__name__ + (f": {lines[0][:300]}" if lines else "")
    return str(exc)[:300]


# --- worker heartbeats ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunningJob:
    id: str
    args: list[Any]
    started: float | None = None


@dataclass(frozen=True)
class WorkerRecord:
    node: str  # the worker's node name (celery@host)
    pid: int
    seen: float  # the last heartbeat, unix seconds
    running: list[RunningJob] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerRecord:
        running = [RunningJob(str(j["id"]), list(j.get("args") or []), j.get("started")) for j in data["running"]]
        return cls(node=str(data["node"]), pid=int(data["pid"]), seen=float(data["seen"]), running=running)


class UnsupportedBackend(Exception):
    """The result backend is neither Redis nor a database: no worker records."""


class WorkerRecords(Protocol):
    def put(self, record: WorkerRecord) -> None: ...
    def remove(self, node: str) -> None: ...
    def all(self) -> list[WorkerRecord]: ...


class _RedisWorkerRecords:
    """One hash, a field per worker: each write and delete is atomic, one read gets all."""

    def __init__(self, backend: Any) -> None:
        self.redis = backend.client
        prefix = backend.task_keyprefix
        prefix = prefix.decode() if isinstance(prefix, bytes) else str(prefix)
        # The backend's global key prefix (result_backend_transport_options), if any.
        self.key = prefix.removesuffix("celery-task-meta-") + WORKERS_HASH

    def put(self, record: WorkerRecord) -> None:
        self.redis.hset(self.key, record.node, json.dumps(record.to_json()))

    def remove(self, node: str) -> None:
        self.redis.hdel(self.key, node)

    def all(self) -> list[WorkerRecord]:
        return [WorkerRecord.from_json(json.loads(v)) for v in self.redis.hvals(self.key)]


class _DatabaseWorkerRecords:
    """A row per worker in the result table (task id WORKER_RECORD_PREFIX + node, state
    WORKER), written and read through the backend; listed by that prefix."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def put(self, record: WorkerRecord) -> None:
        self.backend.store_result(WORKER_RECORD_PREFIX + record.node, record.to_json(), WORKER_STATE)

    def remove(self, node: str) -> None:
        self.backend.forget(WORKER_RECORD_PREFIX + node)

    def all(self) -> list[WorkerRecord]:
        from celery.backends.database import session_cleanup

        task = self.backend.task_cls
        session = self.backend.ResultSession()
        with session_cleanup(session):
            ids = [row[0] for row in session.query(task.task_id).filter(task.task_id.startswith(WORKER_RECORD_PREFIX))]
        records = []
        for task_id in ids:
            meta = self.backend.get_task_meta(task_id)
            if meta.get("status") == WORKER_STATE and isinstance(meta.get("result"), dict):
                records.append(WorkerRecord.from_json(meta["result"]))
        return records


def worker_records(app: Celery) -> WorkerRecords:
    """Where `app`'s result backend keeps the workers' records; UnsupportedBackend when
    it is neither Redis nor a database."""
    backend = app.backend
    # A backend's class is imported with it: look it up rather than import the other one.
    redis_backends = sys.modules.get("celery.backends.redis")
    if redis_backends is not None and isinstance(backend, redis_backends.RedisBackend):
        return _RedisWorkerRecords(backend)
    database_backends = sys.modules.get("celery.backends.database")
    if database_backends is not None and isinstance(backend, database_backends.DatabaseBackend):
        return _DatabaseWorkerRecords(backend)
    raise UnsupportedBackend(f"the {type(backend).__name__} result backend keeps no worker records")


def workers(app: Celery, now: float | None = None) -> list[WorkerRecord]:
    """The workers that wrote a heartbeat in the last WORKER_SILENT_AFTER seconds, by node.
    Raises QueueUnavailable (result backend down) or UnsupportedBackend."""
    now = time.time() if now is None else now
    try:
        records = worker_records(app).all()
    except connection_errors() as e:
        raise QueueUnavailable("result backend", e) from e
    return sorted((r for r in records if now - r.seen <= WORKER_SILENT_AFTER), key=lambda r: r.node)


def running_reaggregations() -> list[RunningJob]:
    """The re-aggregations this worker process runs (Celery's own list of active requests,
    the one `inspect active` answers from)."""
    from celery.worker import state

    for _ in range(5):
        try:
            requests = list(state.active_requests)
            break
        except RuntimeError:  # the set changed while we copied it: copy again
            continue
    else:
        return []
    return sorted(
        (
            RunningJob(str(r.id), list(r.args or ()), r.time_start)
            for r in requests
            if getattr(r, "name", None) == REAGGREGATE_TASK
        ),
        key=lambda j: j.id,
    )


class Heartbeat:
    """A thread in the worker's main process that writes its WorkerRecord every
    HEARTBEAT_SECONDS, and at once when the running re-aggregations change; `stop`
    deletes the record. A result backend that cannot be reached is logged once per
    outage; the worker runs on regardless."""

    POLL_SECONDS = 0.2

    def __init__(
        self,
        settings: Settings,
        node: str,
        running: Callable[[], list[RunningJob]] = running_reaggregations,
    ) -> None:
        self.settings = settings
        self.node = node
        self.running = running
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._records: WorkerRecords | None = None
        self._failing = False

    def start(self) -> None:
        try:
            self._records = worker_records(client(self.settings))
        except UnsupportedBackend as e:
            log.warning("worker heartbeat off: %s; `usage-stats status` cannot see this worker", e)
            return
        self._thread = threading.Thread(target=self._run, name="usage-stats-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._records is not None:
            with self._reporting("delete"):
                self._records.remove(self.node)

    def _run(self) -> None:
        assert self._records is not None
        with self._reporting("prune"):
            cutoff = time.time() - WORKER_FORGOTTEN_AFTER
            for old in self._records.all():
                if old.seen < cutoff:
                    self._records.remove(old.node)
        last_running: list[RunningJob] | None = None
        last_write = 0.0
        while not self._stop.is_set():
            running = self.running()
            if running != last_running or time.monotonic() - last_write >= HEARTBEAT_SECONDS:
                # Written again only after HEARTBEAT_SECONDS when this write fails.
                last_running, last_write = running, time.monotonic()
                with self._reporting("write"):
                    self._records.put(WorkerRecord(self.node, os.getpid(), time.time(), running))
            self._stop.wait(self.POLL_SECONDS)

    @contextmanager
    def _reporting(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if not self._failing:
                log.warning(
                    "worker heartbeat: cannot %s the record (%s); `usage-stats status` will not see this worker",
                    what,
                    type(e).__name__,
                )
            self._failing = True
        else:
            if self._failing:
                log.info("worker heartbeat: written again")
            self._failing = False
