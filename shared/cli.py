"""`usage-stats`: the command line. Each command is a thin call into shared/, worker/ or api/."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from .config import ConfigError, Settings


def _engine(settings: Settings):
    from .db import get_engine

    return get_engine(settings.database_url)


def cmd_db_upgrade(settings: Settings, args) -> int:
    from .migrate import upgrade

    upgrade(_engine(settings))
    print(f"database schema is up to date ({_safe_url(settings.database_url)})")
    return 0


def cmd_rollup(settings: Settings, args) -> int:
    from .ops import run_rollup

    r = run_rollup(_engine(settings), settings, wait=True)
    print(
        f"rolled up {r.logs} consume logs into {r.buckets} hourly buckets in {r.batches} batch(es), "
        f"{r.seconds:.3f}s; last log id {r.last_log_id}; {r.logs_behind} logs behind"
    )
    return 0


def cmd_reaggregate(settings: Settings, args) -> int:
    from .ops import run_reaggregate as reaggregate
    from .retention import check_reaggregate_range

    if args.all:
        from .retention import logs_horizon
        from .rollup import adopt_timezone, history_bounds

        bounds = history_bounds(_engine(settings))
        if bounds is None:
            print("no logs: nothing to re-aggregate")
            return 0
        start, end = bounds
        horizon = logs_horizon(settings, int(time.time()))
        if horizon is not None:
            # Older raw logs may already be gone: keep the rows built from them.
            start = max(start, horizon + 86400)
        if horizon is None and adopt_timezone(_engine(settings), settings):
            print(f"daily rows dropped to be rebuilt in {settings.stats_timezone}")
    else:
        if args.start is None or args.end is None:
            raise ConfigError("reaggregate needs --start and --end (unix seconds), or --all")
        start, end = args.start, args.end
    if end <= start:
        raise ConfigError(f"--end ({end}) must be after --start ({start})")
    try:
        check_reaggregate_range(settings, start)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if args.enqueue:
        from worker import celery
        from worker.app import REAGGREGATE_TASK

        task = celery.send_task(REAGGREGATE_TASK, args=[start, end, args.user_id])
        print(task.id)
        return 0
    from tqdm import tqdm

    bar = tqdm(total=None, unit="chunk", desc="re-aggregating", disable=args.quiet)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    r = reaggregate(_engine(settings), settings, start, end, args.user_id, progress=progress)
    bar.close()
    print(f"re-aggregated [{r.start}, {r.end}) in {r.chunks} chunk(s): {r.logs} consume logs, {r.seconds:.3f}s")
    return 0


def cmd_retention(settings: Settings, args) -> int:
    from .ops import retention

    r = retention(_engine(settings), settings)
    if not r.enabled:
        print("retention is off: set RETAIN_HOURLY_DAYS and/or RETAIN_LOGS_DAYS")
        return 0
    parts = [f"{table}: {n} rows deleted" for table, n in r.deleted.items()]
    print("; ".join(parts) + f" ({r.seconds:.3f}s)")
    return 0


def cmd_demo_data(settings: Settings, args) -> int:
    from .demo import generate

    creds, n = generate(
        _engine(settings), days=args.days, users=args.users, logs_per_day=args.logs_per_day, seed=args.seed
    )
    print(f"wrote {n} logs over {args.days} days")
    _print_credentials(creds)
    return 0


def _print_credentials(creds) -> None:
    print(f"  admin: New-Api-User: {creds.admin_id}   Authorization: Bearer {creds.admin_token}")
    print(f"  user:  New-Api-User: {creds.user_id}   Authorization: Bearer {creds.user_token}")


def cmd_status(settings: Settings, args) -> int:
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
    print(f"re-aggregations running: {_running_reaggregations(settings)}")
    return 0


def _running_reaggregations(settings: Settings) -> str:
    """Asks the live workers (a broadcast over the broker, one second at most)."""
    try:
        from worker import celery
        from worker.app import REAGGREGATE_TASK

        active = celery.control.inspect(timeout=1.0).active() or {}
    except Exception as exc:  # the broker is down: say so rather than fail the whole status
        return f"unknown (broker unreachable: {type(exc).__name__})"
    if not active:
        return "none (no worker answered)"
    tasks = [t for per_worker in active.values() for t in per_worker if t.get("name") == REAGGREGATE_TASK]
    if not tasks:
        return "none"
    return ", ".join(f"{t['id']} {t.get('args')}" for t in tasks)


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


def _api_available() -> bool:
    try:
        import api

        return hasattr(api, "create_app")
    except ImportError:
        return False


def cmd_serve(settings: Settings, args) -> int:
    if not _api_available():
        raise ConfigError("the API package is not installed")
    os.execv(sys.executable, _gunicorn_cmd(args.host, args.port, args.workers))


def cmd_up(settings: Settings, args) -> int:
    """Migrate, optionally seed, then run worker + beat (+ API) until Ctrl-C."""
    from .migrate import upgrade

    engine = _engine(settings)
    upgrade(engine)
    print(f"database: {_safe_url(settings.database_url)} (schema up to date)")
    if args.demo:
        import sqlalchemy as sa

        from . import models as m
        from .demo import generate

        with engine.connect() as conn:
            has_logs = conn.execute(sa.select(m.logs.c.id).limit(1)).first() is not None
        creds, n = generate(engine, days=args.days, logs_per_day=2000) if not has_logs else generate(engine, days=0)
        print(f"demo data: {n} new logs" if n else "demo data: already present, none added")
        _print_credentials(creds)

    children: list[tuple[str, subprocess.Popen]] = []
    celery_cmd = [
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
    children.append(("worker+beat", subprocess.Popen(celery_cmd, start_new_session=True)))
    if _api_available():
        children.append(("api", subprocess.Popen(_gunicorn_cmd(args.host, args.port, 1), start_new_session=True)))
        print(f"API: http://{args.host}:{args.port}/api/data/self")
    print(f"rolling up every {settings.rollup_interval_seconds}s; Ctrl-C stops everything")

    # Children run in their own sessions, so Ctrl-C reaches only us and we stop them in order.
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                print(f"{name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                code = proc.returncode or 1
                stopping = True
        time.sleep(0.2)
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
    print("stopped")
    return code


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
    db_sub.add_parser("upgrade", help="create or upgrade the schema (idempotent)").set_defaults(func=cmd_db_upgrade)

    sub.add_parser("rollup", help="run one tick now, until caught up").set_defaults(func=cmd_rollup)

    r = sub.add_parser("reaggregate", help="recompute the buckets of [start, end) from raw logs")
    r.add_argument("--start", type=int, help="unix seconds (aligned down to local midnight)")
    r.add_argument("--end", type=int, help="unix seconds, exclusive (aligned up to local midnight)")
    r.add_argument("--all", action="store_true", help="the whole history (also adopts a changed STATS_TIMEZONE)")
    r.add_argument("--user-id", type=int, default=None)
    r.add_argument("--enqueue", action="store_true", help="hand it to the worker and print the task id")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_reaggregate)

    d = sub.add_parser("demo-data", help="write realistic synthetic users and logs")
    d.add_argument("--days", type=int, default=7)
    d.add_argument("--users", type=int, default=20)
    d.add_argument("--logs-per-day", type=int, default=2000)
    d.add_argument("--seed", type=int, default=None)
    d.set_defaults(func=cmd_demo_data)

    sub.add_parser("status", help="rollup lag, last tick, open gaps").set_defaults(func=cmd_status)

    sub.add_parser(
        "retention", help="drop hourly rows and raw logs past RETAIN_HOURLY_DAYS / RETAIN_LOGS_DAYS (off when unset)"
    ).set_defaults(func=cmd_retention)

    s = sub.add_parser("serve", help="serve the API with gunicorn")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=cmd_serve)

    u = sub.add_parser("up", help="migrate, then run worker, beat and API in one command")
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
        return args.func(settings, args) or 0
    except ConfigError as exc:
        print(f"usage-stats: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one clear line, not a traceback, for operational errors
        import sqlalchemy as sa

        from .rollup import RollupError

        if isinstance(exc, RollupError):
            print(f"usage-stats: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, sa.exc.OperationalError):
            print(f"usage-stats: cannot reach the database: {exc.orig}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
