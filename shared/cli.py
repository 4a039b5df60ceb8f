"""`usage-stats`: the command line. Each command is a thin call into shared/; the worker,
beat and the API are started as processes by name (`python -m celery -A worker`,
gunicorn 'api:create_app()') and tasks are sent by name (shared.jobs), so that the core
imports nothing above it."""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from .config import ConfigError, Settings

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Engine

    from .demo import DemoUsers
    from .migrate import UpgradeResult

# Where a user finds the token the API and the chart page ask for.
TOKEN_HELP = (
    "the access token is new-api's system access token (Personal settings: generate the "
    "system access token), not an sk- API key"
)
# `up` rolls up before it starts the services for at most this long; the worker goes on.
ROLLUP_AT_START_SECONDS = 10.0
# `status` waits at most this long for a result backend that does not answer.
STATUS_CONNECT_TIMEOUT = 0.5


def _engine(settings: Settings) -> Engine:
    """The database of `logs` and the rollup's tables."""
    from .db import get_engine

    return get_engine(settings.stats_database_url)


def _gateway(settings: Settings) -> Engine:
    """The gateway's main database, of `users`, `tokens` and `channels` (the same engine
    as `_engine` unless the logs are apart)."""
    from .db import get_engine

    return get_engine(settings.database_url)


def _jobs_client(settings: Settings, connect_timeout: float = 3.0) -> Celery:
    from . import jobs

    return jobs.client(settings, connect_timeout=connect_timeout)


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:

    engine = _engine(settings)
    upgraded = _upgrade(settings, engine)
    _fill_added_summaries(engine, settings, upgraded)
    return 0


def _upgrade(settings: Settings, engine: Engine) -> UpgradeResult:
    """Migrate the database of `logs` (and, with the logs apart, make sure the main one
    has new-api's users, tokens and channels), saying what was done."""
    from .migrate import ensure_gateway_tables, upgrade

    apart = settings.log_database_url is not None
    upgraded = upgrade(engine, gateway_tables=not apart)
    print(f"database {_safe_url(settings.stats_database_url)}: schema {upgraded}")
    if apart:
        created = ensure_gateway_tables(_gateway(settings))
        what = f"created {', '.join(created)}" if created else "users, tokens and channels present"
        print(f"main database {_safe_url(settings.database_url)}: {what}")
    return upgraded


def _fill_added_summaries(engine: Engine, settings: Settings, upgraded: UpgradeResult) -> None:
    """New summary tables start empty (and newly cut hours need rebuilding): fill them
    from the counted raw logs, saying so."""
    from .ops import fill_added_summaries

    r = fill_added_summaries(engine, settings, upgraded)
    if r is not None:
        what = "new summary tables filled" if upgraded.added_summaries else "detail hours cut at local midnights"
        print(
            f"{what} from the raw logs: [{r.start}, {r.end}), {r.logs} consume logs, "
            f"{r.chunks} chunk(s), {r.seconds:.1f}s"
        )


def cmd_rollup(settings: Settings, args: argparse.Namespace) -> int:
    from .ops import run_rollup

    r = run_rollup(_engine(settings), settings, wait=True)
    print(
        f"rolled up {r.logs} consume logs into {r.buckets} hourly buckets in {r.batches} batch(es), "
        f"{r.seconds:.3f}s; last log id {r.last_log_id}; {r.logs_behind} logs behind"
    )
    return 0


def _reaggregate_range(settings: Settings, args: argparse.Namespace) -> tuple[int, int] | None:
    """[start, end) from --start/--end, or the whole history with --all (adopting a changed
    STATS_TIMEZONE); None when there are no logs at all."""
    if not args.all:
        if args.start is None or args.end is None:
            raise ConfigError("reaggregate needs --start and --end (unix seconds), or --all")
        return int(args.start), int(args.end)
    from .ops import rebuildable_history
    from .rollup import adopt_timezone

    bounds = rebuildable_history(_engine(settings), settings)
    if bounds is None:
        return None
    # With RETAIN_LOGS_DAYS set, older daily rows cannot be rebuilt: no zone change then.
    if not settings.retain_logs_days and adopt_timezone(_engine(settings), settings):
        print(f"daily rows dropped to be rebuilt in {settings.stats_timezone}")
    return bounds


def cmd_reaggregate(settings: Settings, args: argparse.Namespace) -> int:
    from .ops import run_reaggregate
    from .retention import check_reaggregate_range

    bounds = _reaggregate_range(settings, args)
    if bounds is None:
        print("no logs: nothing to re-aggregate")
        return 0
    start, end = bounds
    if end <= start:
        raise ConfigError(f"--end ({end}) must be after --start ({start})")
    try:
        check_reaggregate_range(settings, start)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.enqueue:
        from .jobs import enqueue_reaggregate

        # With its "enqueued" marker: GET /api/data/reaggregate/<id> knows it at once.
        print(
            enqueue_reaggregate(
                _jobs_client(settings), start, end, args.user_id, check_every_table=args.check_every_table
            )
        )
        return 0
    from tqdm import tqdm

    bar = tqdm(total=None, unit="chunk", desc="re-aggregating", disable=args.quiet)

    def show_progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    r = run_reaggregate(
        _engine(settings),
        settings,
        start,
        end,
        args.user_id,
        progress=show_progress,
        check_every_table=args.check_every_table,
    )
    bar.close()
    print(f"re-aggregated [{r.start}, {r.end}) in {r.chunks} chunk(s): {r.logs} consume logs, {r.seconds:.3f}s")
    return 0


def cmd_retention(settings: Settings, args: argparse.Namespace) -> int:
    from .ops import run_retention

    r = run_retention(_engine(settings), settings)
    if not r.enabled:
        print("retention is off: set RETAIN_HOURLY_DAYS and/or RETAIN_LOGS_DAYS")
        return 0
    parts = [f"{table}: {n} rows deleted" for table, n in r.deleted.items()]
    parts += [f"{table}: {n} hour rows compacted into days" for table, n in r.compacted.items()]
    print("; ".join(parts) + f" ({r.seconds:.3f}s)")
    return 0


def cmd_demo_data(settings: Settings, args: argparse.Namespace) -> int:
    from .demo import generate

    creds, n = generate(
        _engine(settings),
        days=args.days,
        users=args.users,
        logs_per_day=args.logs_per_day,
        seed=args.seed,
        gateway=_gateway(settings),
    )
    print(f"wrote {n} logs over {args.days} days")
    _print_credentials(creds)
    return 0


def _print_credentials(creds: DemoUsers) -> None:
    print(f"  admin: New-Api-User: {creds.admin_id}   Authorization: Bearer {creds.admin_token}")
    print(f"  user:  New-Api-User: {creds.user_id}   Authorization: Bearer {creds.user_token}")


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from . import models as m
    from .rollup import backlog

    engine = _engine(settings)
    with engine.connect() as conn:
        state = conn.execute(sa.select(m.rollup_state).where(m.rollup_state.c.id == 1)).one()
        gaps = conn.execute(sa.select(sa.func.count()).select_from(m.rollup_gap)).scalar()
    behind, lag = backlog(engine)
    last = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(state.last_tick_at)) if state.last_tick_at else "never"
    print(f"last tick:    {last} ({state.last_tick_seconds or 0:.3f}s, {state.last_tick_logs or 0} logs)")
    print(f"last log id:  {state.last_log_id}")
    print(f"lag:          {lag}s, {behind} logs behind")
    print(f"open gaps:    {gaps} (log ids seen missing while a transaction may still commit them)")
    print(f"timezone:     {state.timezone or settings.stats_timezone}")
    for line in _worker_status(settings):
        print(line)
    return 0


def _worker_status(settings: Settings) -> list[str]:
    """The workers and the re-aggregations they run, from the heartbeats the workers write
    to the result backend (shared.jobs): one read, the same on every broker."""
    from . import jobs

    try:
        client = _jobs_client(settings, connect_timeout=STATUS_CONNECT_TIMEOUT)
        alive = jobs.workers(client)
    except (jobs.QueueUnavailable, jobs.UnsupportedBackend) as e:
        return [f"workers:      unknown ({e})", "re-aggregations running: unknown"]
    if not alive:
        silent = f"no heartbeat in the last {jobs.WORKER_SILENT_AFTER:.0f}s"
        return [f"workers:      none ({silent})", "re-aggregations running: none (no worker runs)"]
    now = time.time()
    lines = [f"workers:      {len(alive)}: " + ", ".join(f"{w.node} (seen {now - w.seen:.0f}s ago)" for w in alive)]
    running = [(w.node, job) for w in alive for job in w.running]
    if not running:
        return [*lines, "re-aggregations running: none"]
    described = []
    for node, job in running:
        start, end, user_id = _reaggregate_args(job.args)
        status = None
        try:
            status = jobs.job_status(client, job.id)
        except jobs.QueueUnavailable:
            pass
        chunks = f"{status.done}/{status.total if status.total is not None else '?'} chunks" if status else "started"
        who = f"user {user_id}" if user_id is not None else "all users"
        described.append(f"{job.id} [{start}, {end}) {who}: {chunks} on {node}")
    return [*lines, f"re-aggregations running: {len(running)}", *(f"  {d}" for d in described)]


def _reaggregate_args(args: list[Any]) -> tuple[Any, Any, Any]:
    """(start, end, user_id) of a re-aggregation task's arguments."""
    start, end, user_id, *_ = [*args, None, None, None]
    return start, end, user_id


def _gunicorn_cmd(host: str, port: int, workers: int) -> list[str]:
    # No gunicorn access log: the API writes one line per request itself (LOG_FORMAT).
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:api.gunicorn_conf",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "api:create_app()",
    ]


def _celery_worker_cmd() -> list[str]:
    # One process, beat embedded: what a single machine needs (production runs them apart).
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "--beat",
        "--pool",
        "solo",
        "--loglevel",
        "INFO",
        "--schedule",
        os.path.abspath("celerybeat-schedule"),
    ]


def _api_installed() -> bool:
    """Whether the API package is there to be started (looked up, not imported)."""
    return importlib.util.find_spec("api") is not None


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    if not _api_installed():
        raise ConfigError("the API package is not installed")
    os.execv(sys.executable, _gunicorn_cmd(args.host, args.port, args.workers))


def _page_url(host: str, port: int, **fragment: Any) -> str:
    """The chart page; settings in the fragment, which browsers never send to a server."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{port}/"
    return url + "#" + urllib.parse.urlencode(fragment) if fragment else url


def _ready(jobs_client: Celery, host: str, port: int) -> bool:
    """The API answers /healthz and a worker has written its heartbeat."""
    from . import jobs

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to us, whatever HTTP_PROXY says
    try:
        with opener.open(_page_url(host, port) + "healthz", timeout=0.5) as response:
            if response.status != 200:
                return False
        return bool(jobs.workers(jobs_client))
    except (urllib.error.URLError, OSError, jobs.QueueUnavailable, jobs.UnsupportedBackend):
        return False


def _roll_up_at_start(engine: Engine, settings: Settings) -> None:
    """Roll up now, so that the page and `status` are current at once rather than after
    beat's first interval; for at most ROLLUP_AT_START_SECONDS, then the worker goes on
    (at once: a rollup run is queued for it)."""
    from .ops import run_rollup
    from .rollup import RollupError

    try:
        r = run_rollup(engine, settings, max_seconds=ROLLUP_AT_START_SECONDS)
    except RollupError as e:
        # The services start anyway (the API answers from what was rolled up); the message
        # says what to do, and the worker's ticks repeat it until it is done.
        print(f"usage-stats: the rollup cannot go on: {e}", file=sys.stderr)
        return
    if r.skipped:
        print("rolled up at start: skipped (another tick or a re-aggregation runs)")
        return
    print(f"rolled up at start: {r.logs} consume logs in {r.seconds:.1f}s, {r.logs_behind} logs behind")
    if r.logs_behind:
        from .jobs import enqueue_rollup

        enqueue_rollup(_jobs_client(settings))


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Migrate, optionally seed, roll up, then run worker + beat (+ API) until Ctrl-C."""

    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # each line as it happens, also into a pipe
    engine = _engine(settings)
    try:
        upgraded = _upgrade(settings, engine)
        _fill_added_summaries(engine, settings, upgraded)
        creds = _seed_demo(engine, _gateway(settings), args.days) if args.demo else None
        _roll_up_at_start(engine, settings)
    except KeyboardInterrupt:
        print("stopped")
        return 130

    # Children run in their own sessions, so Ctrl-C reaches only us and we stop them in order.
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    children.append(("worker+beat", subprocess.Popen(_celery_worker_cmd(), start_new_session=True)))
    api = _api_installed()
    if api:
        children.append(("api", subprocess.Popen(_gunicorn_cmd(args.host, args.port, 1), start_new_session=True)))
    else:
        print("API: not installed (the api package is missing); worker and beat only")
    print(f"rolling up every {settings.rollup_interval_seconds}s; Ctrl-C stops everything")

    # The link last, once the API answers and the worker is up (its banner printed).
    announce_by = time.monotonic() + 30
    announced = not api
    jobs_client = _jobs_client(settings, connect_timeout=0.5)
    code = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                print(f"{name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                code = proc.returncode or 1
                stopping = True
        if (
            not announced
            and not stopping
            and (_ready(jobs_client, args.host, args.port) or time.monotonic() > announce_by)
        ):
            _print_page(args.host, args.port, creds)
            announced = True
        time.sleep(0.2)
    _stop_children(children)
    print("stopped")
    return code


def _seed_demo(engine: Engine, gateway: Engine, days: int) -> DemoUsers:
    import sqlalchemy as sa

    from . import models as m
    from .demo import generate

    with engine.connect() as conn:
        has_logs = conn.execute(sa.select(m.logs.c.id).limit(1)).first() is not None
    creds, n = generate(engine, days=days if not has_logs else 0, logs_per_day=2000, gateway=gateway)
    print(f"demo data: {n} new logs" if n else "demo data: already present, none added")
    _print_credentials(creds)
    return creds


def _print_page(host: str, port: int, creds: DemoUsers | None) -> None:
    print()
    if creds is None:
        print(f"chart page: {_page_url(host, port)} ({TOKEN_HELP})")
    else:
        print(f"chart page: {_page_url(host, port, token=creds.user_token, user=creds.user_id)}")
        admin = _page_url(host, port, token=creds.admin_token, user=creds.admin_id, scope="site")
        print(f"  site-wide, as the admin: {admin}")
    print()


def _stop_children(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, proc in children:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for name, proc in children:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in time; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable DATABASE_URL>"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="usage-stats", description="Exactly-once usage rollups for LLM gateway logs.")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="create or upgrade the schema (idempotent); says what it did").set_defaults(
        func=cmd_db_upgrade
    )

    sub.add_parser("rollup", help="run one tick now, until caught up").set_defaults(func=cmd_rollup)

    r = sub.add_parser("reaggregate", help="recompute the buckets of [start, end) from raw logs")
    r.add_argument("--start", type=int, help="unix seconds (aligned down to local midnight)")
    r.add_argument("--end", type=int, help="unix seconds, exclusive (aligned up to local midnight)")
    r.add_argument("--all", action="store_true", help="the whole history (also adopts a changed STATS_TIMEZONE)")
    r.add_argument("--user-id", type=int, default=None)
    r.add_argument(
        "--enqueue", action="store_true", help="hand it to the worker and print the id (GET /api/data/reaggregate/<id>)"
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--check-every-table",
        action="store_true",
        help="compare every summary table with the logs, not only the finest one (a repair; slower)",
    )
    r.set_defaults(func=cmd_reaggregate)

    d = sub.add_parser("demo-data", help="write realistic synthetic users and logs")
    d.add_argument("--days", type=int, default=7)
    d.add_argument("--users", type=int, default=20)
    d.add_argument("--logs-per-day", type=int, default=2000)
    d.add_argument("--seed", type=int, default=None)
    d.set_defaults(func=cmd_demo_data)

    sub.add_parser("status", help="rollup lag, last tick, open gaps, workers and running re-aggregations").set_defaults(
        func=cmd_status
    )

    sub.add_parser(
        "retention", help="drop hourly rows and raw logs past RETAIN_HOURLY_DAYS / RETAIN_LOGS_DAYS (off when unset)"
    ).set_defaults(func=cmd_retention)

    s = sub.add_parser("serve", help="serve the API with gunicorn")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_serve)

    u = sub.add_parser("up", help="migrate, roll up, then run worker, beat and API in one command")
    u.add_argument("--demo", action="store_true", help="seed demo users and logs first (once)")
    u.add_argument("--days", type=int, default=7, help="days of demo data")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=8000)
    u.set_defaults(func=cmd_up)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .logging_setup import configure

    try:
        settings = Settings.from_env()
        configure(settings.log_format)
        return int(args.func(settings, args) or 0)
    except ConfigError as exc:
        print(f"usage-stats: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one clear line, not a traceback, for operational errors
        import sqlalchemy as sa

        from .jobs import QueueUnavailable
        from .migrate import MigrationFailed
        from .rollup import RollupError

        if isinstance(exc, (RollupError, MigrationFailed)):
            print(f"usage-stats: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, QueueUnavailable):
            print(f"usage-stats: task queue unavailable ({exc})", file=sys.stderr)
            return 1
        missing = _missing_driver(exc)
        if missing is not None:
            print(f"usage-stats: {missing}", file=sys.stderr)
            return 1
        if isinstance(exc, sa.exc.DBAPIError):
            print(f"usage-stats: {_database_failure(settings, exc)}", file=sys.stderr)
            return 1
        raise


# The package that installs each database driver module, for a one-line hint.
DRIVER_PACKAGES = {"pymysql": "pymysql", "MySQLdb": "mysqlclient", "psycopg2": "psycopg2-binary", "psycopg": "psycopg"}


def _missing_driver(exc: BaseException) -> str | None:
    """A database URL whose driver is not installed, in one line naming the package."""
    import sqlalchemy as sa

    if isinstance(exc, ModuleNotFoundError) and exc.name:
        root = exc.name.split(".")[0]
        if root in DRIVER_PACKAGES:
            return f"the database driver {root} is not installed: pip install {DRIVER_PACKAGES[root]}"
    if isinstance(exc, sa.exc.NoSuchModuleError):
        return f"no database driver for this URL ({exc}): check the scheme of DATABASE_URL or SQL_DSN"
    return None


def _database_failure(settings: Settings, exc: BaseException) -> str:
    """What failed: "cannot reach the database" only when a fresh connection to it fails
    too (a server that refused a statement was reached); either way the driver's first
    line, without the statement or its parameters."""
    from .db import make_engine

    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    urls = dict.fromkeys([settings.stats_database_url, settings.database_url])
    for url in urls:
        probe = make_engine(url)
        try:
            with probe.connect():
                pass
        except Exception:
            return f"cannot reach the database {_safe_url(url)}: {first}"
        finally:
            probe.dispose()
    return f"the database refused a statement: {first}"


if __name__ == "__main__":
    sys.exit(main())
