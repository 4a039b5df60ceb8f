"""Throwaway servers and service processes for fault tests. Everything here is bounded
in time (every wait has a deadline) and cleaned up by its context manager, killed by its
process group id, never by name.

- PgServer: `initdb` in a temporary folder, `pg_ctl` on a free port (run as the postgres
  user when we are root: initdb refuses root), trust auth on 127.0.0.1 only.
- RedisServer: `redis-server` on a free port, no persistence; kill / start again on the
  same port.
- Service: any subprocess (gunicorn, celery worker or beat) with its output in a file.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository
PG_BIN = Path(os.environ.get("TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def service_env(**overrides) -> dict:
    """The environment for a service subprocess: this one, the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("LOG_FORMAT", "plain")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


# --- PostgreSQL --------------------------------------------------------------------------


class PgServer:
    """A PostgreSQL cluster of our own: initdb'd in `folder`, on a free port."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.data = folder / "data"
        self.logfile = folder / "postgres.log"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")

    def init(self) -> PgServer:
        if not (PG_BIN / "initdb").exists():
            pytest.skip(f"no initdb in {PG_BIN} (set TEST_PG_BIN)")
        if self.as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        os.chmod(self.folder, 0o700)
        r = self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"
        )
        assert r.returncode == 0, f"initdb failed: {r.stderr}"
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.folder}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n"
                "shared_buffers = 32MB\n"
            )
        return self

    def start(self) -> None:
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "30", "start")
        assert r.returncode == 0, f"pg_ctl start failed: {r.stdout}{r.stderr}{self.log()}"

    def stop(self, mode: str = "fast") -> None:
        r = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
        assert r.returncode == 0, f"pg_ctl stop failed: {r.stdout}{r.stderr}"

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(
            self.url().replace("postgresql://", "postgresql+psycopg2://"), isolation_level="AUTOCOMMIT"
        )
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return self.url(name)


@contextmanager
def pg_server():
    """A running throwaway PostgreSQL; stopped (immediate) and deleted on exit."""
    folder = Path(tempfile.mkdtemp(prefix="usage-stats-pg-"))
    server = PgServer(folder)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server._run("pg_ctl", "-D", str(server.data), "-m", "immediate", "-w", "-t", "30", "stop")
        except Exception:
            pass
        shutil.rmtree(folder, ignore_errors=True)


# --- Redis -------------------------------------------------------------------------------


class RedisServer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server not on PATH")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--logfile",
                str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: port_open(self.port), 10, f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        wait_until(lambda: not port_open(self.port), 10, "redis-server to go away")


@contextmanager
def redis_server():
    folder = Path(tempfile.mkdtemp(prefix="usage-stats-redis-"))
    server = RedisServer(folder)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(folder, ignore_errors=True)


# --- service subprocesses ----------------------------------------------------------------


class Service:
    """A subprocess in its own process group, output to a file."""

    def __init__(self, name: str, cmd: list[str], env: dict, folder: Path):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.folder = folder
        self.logfile = folder / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        # The child keeps its own copy of the file descriptor; ours closes on leaving.
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, cwd=self.folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the group, then SIGKILL it after `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: prefork children too
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def gunicorn(folder: Path, env: dict, port: int, workers: int = 2) -> Service:
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:api.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--timeout",
        "30",
        "--graceful-timeout",
        "5",
        "api:create_app()",
    ]
    return Service(f"gunicorn-{port}", cmd, env, folder)


def celery_worker(
    folder: Path, env: dict, *, app: str = "worker", pool: str = "solo", beat: bool = False, name: str = "worker"
) -> Service:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--pool",
        pool,
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"{name}@%h",
    ]
    if pool == "prefork":
        cmd += ["--concurrency", "1"]
    if beat:
        cmd += ["--beat", "--schedule", str(folder / f"{name}-beat-schedule")]
    return Service(name, cmd, env, folder)


def celery_beat(folder: Path, env: dict, name: str = "beat") -> Service:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        str(folder / f"{name}-schedule"),
    ]
    return Service(name, cmd, env, folder)


@contextmanager
def running(*services: Service):
    """Start the services; stop (then kill) every one of them on exit, whatever happens."""
    try:
        for s in services:
            s.start()
        yield services
    finally:
        for s in reversed(services):
            s.stop(timeout=10)


def wait_http(port: int, path: str = "/healthz", timeout: float = 30) -> None:
    import urllib.request

    def ok():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status == 200

    wait_until(ok, timeout, f"HTTP {path} on port {port}", interval=0.2)
