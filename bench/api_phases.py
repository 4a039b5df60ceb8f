"""The API's CPU per request, by phase, for two code trees side by side (issue 14, target 4).

    python -m bench.api_phases                              # this tree against itself: the noise
    python -m bench.api_phases --tree ../wt-etag --migrated-copy       # this tree, then that one
    python -m bench.api_phases --before 1ec9a6d --tree e5bac47 --migrated-copy --rounds 9

A tree is a directory (a work tree) or a revision of this repository (its api and
shared packages exported by git archive). --migrated-copy: for an after tree with
migrations the data set lacks (both trees then read a copy of it, migrated by the after
tree; the original keeps the schema bench.run gave it).

Each tree runs in a process of its own (this file, with the tree first on sys.path, so
that its `api` and `shared` packages are the ones imported; the same interpreter and
libraries for both), which builds the tree's Flask app (api.create_app, Settings with the
benchmark database) and calls it as a WSGI application in-process: no server, no
network, so what is counted is the API's own CPU. This process only sends each tree the
same batches of requests, in turn: case by case, the two trees back to back, their order
swapped every round; per-request figures are medians over the rounds.

The requests are figure 3's of bench/run.py, with its heaviest user and its credentials
(bench.data's tokens, the headers of bench/wrk_auth.lua):

- self_hourly: /api/data/self, the heaviest user, 30 days by the hour (2,130 rows in
  the dense 1M data set);
- site_daily: /api/data/ as the root user, 30 days by day (1,200 rows);
each as JSON and as CSV (`_json`, `_csv`); a case ending in `:304` sends If-None-Match
with the ETag of that tree's own first answer (a tree without ETags answers 200: a poll
as it costs there).

The phases are thread CPU time (CLOCK_THREAD_CPUTIME_ID) charged to whichever of them
the request is in, innermost first, by wrappers installed from outside around the
tree's functions and SQLAlchemy's (nothing in the product is edited):

- auth: api.auth.authenticate, shared.auth's lookups, and the SQL they run;
- sql: statement preparation (shared.queries.prepare, the rollup's progress), execution
  (Connection.execute), the driver's fetch (psycopg2 parsing rows into Python values:
  sql.fetch) and connections (checkout, isolation level, the rollback on return);
- rows: SQLAlchemy's Row objects, then dicts (shared.queries.rows / stream_rows), names
  (shared.names.name_rows);
- serialize: JSON (api.jsonprovider) and CSV (api.csvexport.lines) encoding;
- rest: everything else: Flask and Werkzeug, parameters (rest.params), the metrics and
  the access log line (rest.ops), the ETag's digests and headers (rest.etag; reading
  an answer's version is sql.version).

Every batch runs twice, once with the wrappers and once without: `total` is the CPU per
request without them, `instrumented` with them (their cost is the difference), and the
phases add up to `instrumented`. `db_server_ms` is the PostgreSQL backends' CPU per
request (from /proc, 10 ms ticks over the batch): not the API's, shown beside it.
Access log lines are formatted and written to /dev/null.

Data: bench.run's data sets (`python -m bench.run --shape dense --rows 1M --figures
none` builds usage_stats_bench_dense_1m); --shape/--rows pick one, --db-url any
other. Results go to bench/results/api_phases_<shape>_<rows>_<before>_vs_<after>.json.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import inspect
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DAY = 86400
PHASES = ("auth", "sql", "rows", "serialize", "rest")
CASES = (
    "self_hourly_json",
    "self_hourly_csv",
    "site_daily_json",
    "site_daily_csv",
    "self_hourly_json:304",
    "site_daily_json:304",
)

# (module:attribute, label): the label's first part is its phase; module:* is every
# function defined in that module. Missing ones (another tree may not have them) are
# skipped and listed in the results. A function imported by name elsewhere (`from .auth
# import authenticate`) is replaced wherever the tree's modules hold it, and where the
# app holds it (views, before and after request hooks).
TARGETS: tuple[tuple[str, str], ...] = (
    ("api.auth:authenticate", "auth"),
    ("shared.auth:user_by_access_token", "auth"),
    ("shared.auth:live_user_id", "auth"),
    ("shared.queries:prepare", "sql.prepare"),
    ("shared.rollup:read_progress", "sql.progress"),
    ("sqlalchemy.engine.base:Engine.connect", "sql.connect"),
    ("sqlalchemy.engine.base:Connection.execution_options", "sql.connect"),
    ("sqlalchemy.engine.base:Connection.close", "sql.connect"),
    ("sqlalchemy.engine.base:Connection.execute", "sql.execute"),
    ("sqlalchemy.engine.base:Connection.exec_driver_sql", "sql.execute"),
    ("sqlalchemy.engine.cursor:CursorFetchStrategy.fetchone", "sql.fetch"),
    ("sqlalchemy.engine.cursor:CursorFetchStrategy.fetchmany", "sql.fetch"),
    ("sqlalchemy.engine.cursor:CursorFetchStrategy.fetchall", "sql.fetch"),
    ("sqlalchemy.engine.cursor:BufferedRowCursorFetchStrategy.fetchone", "sql.fetch"),
    ("sqlalchemy.engine.cursor:BufferedRowCursorFetchStrategy.fetchmany", "sql.fetch"),
    ("sqlalchemy.engine.cursor:BufferedRowCursorFetchStrategy.fetchall", "sql.fetch"),
    ("sqlalchemy.engine.result:Result.all", "rows.sqlalchemy"),
    ("sqlalchemy.engine.result:Result.partitions", "rows.sqlalchemy"),
    ("shared.queries:rows", "rows.dicts"),
    ("shared.queries:stream_rows", "rows.dicts"),
    ("shared.names:name_rows", "rows.names"),
    ("api.jsonprovider:OrjsonProvider.response", "serialize.json"),
    ("api.jsonprovider:OrjsonProvider.dumps", "serialize.json"),
    ("api.csvexport:lines", "serialize.csv"),
    ("api.params:parse_window", "rest.params"),
    ("api.params:parse_selection", "rest.params"),
    ("api.ops:_finish", "rest.ops"),
    # The ETag and the answer cache (issue 14), where a tree has them: every function of
    # these modules. Reading an answer's version is SQL.
    ("shared.queries:read_version", "sql.version"),
    ("shared.queries:tail_signature", "sql.version"),
    ("api.etag:*", "rest.etag"),
    ("api.answer_cache:*", "rest.cache"),
    ("shared.answer_cache:*", "rest.cache"),
)
# Everything run inside these phases stays theirs (auth's own SQL is auth's, as
# auth.sql.execute and so on).
ENCLOSING = ("auth",)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- in each tree's process ----------------------------------------------------------------


class Phases:
    """Thread CPU charged to the innermost open phase; "rest" when none is open."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)
        self.stack = ["rest"]
        self.mark = time.thread_time_ns()

    def push(self, label: str) -> None:
        now = time.thread_time_ns()
        top = self.stack[-1]
        self.ns[top] += now - self.mark
        self.mark = now
        outer = top.split(".")[0]
        if outer in ENCLOSING and label.split(".")[0] != outer:
            label = f"{outer}.{label}"
        self.stack.append(label)

    def pop(self) -> None:
        now = time.thread_time_ns()
        self.ns[self.stack.pop()] += now - self.mark
        self.mark = now

    def close(self) -> dict[str, int]:
        self.pop()
        return dict(self.ns)


class Instruments:
    """The wrappers of TARGETS: installed for an instrumented batch, removed after."""

    def __init__(self, app: Any, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.phases: Phases | None = None
        # Where Flask keeps functions registered before we wrap them.
        self.registries: list[Any] = [
            app.view_functions,
            *app.before_request_funcs.values(),
            *app.after_request_funcs.values(),
            *app.teardown_request_funcs.values(),
        ]
        self.swaps: list[tuple[Any, Any, Any, Any]] = []
        self.installed: list[str] = []
        self.missing: list[str] = []
        for target, label in TARGETS + extra:
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                self.missing.append(target)
                continue
            if attr == "*":
                names = [
                    (module, name)
                    for name, value in vars(module).items()
                    if inspect.isfunction(value) and value.__module__ == module_name
                ]
            else:
                *path, name = attr.split(".")
                owner: Any = module
                for part in path:
                    owner = getattr(owner, part, None)
                names = [(owner, name)] if owner is not None and name in vars(owner) else []
            if not names:
                self.missing.append(target)
                continue
            for owner, name in names:
                self._wrap(owner, name, label)
            self.installed.append(target)

    def _wrap(self, owner: Any, name: str, label: str) -> None:
        original = vars(owner)[name]
        wrapped = (self._generator if inspect.isgeneratorfunction(original) else self._function)(original, label)
        self.swaps.append((owner, name, original, wrapped))
        if not isinstance(owner, type):
            # The same function under other names in the tree's modules.
            for mod in list(sys.modules.values()):
                if mod is owner or not _of_tree(getattr(mod, "__name__", "")):
                    continue
                for other, value in list(vars(mod).items()):
                    if value is original:
                        self.swaps.append((mod, other, original, wrapped))
            for registry in self.registries:
                keys = registry.keys() if isinstance(registry, dict) else range(len(registry))
                for key in list(keys):
                    if registry[key] is original:
                        self.swaps.append((registry, key, original, wrapped))

    def _function(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            phases = self.phases
            if phases is None:
                return fn(*args, **kwargs)
            phases.push(label)
            try:
                return fn(*args, **kwargs)
            finally:
                phases.pop()

        return wrapper

    def _generator(self, fn: Callable[..., Iterator[Any]], label: str) -> Callable[..., Iterator[Any]]:
        # Charged while the generator runs, i.e. on each resumption, not while its
        # consumer holds it.
        def traced(gen: Iterator[Any], phases: Phases) -> Iterator[Any]:
            try:
                while True:
                    phases.push(label)
                    try:
                        item = next(gen)
                    except StopIteration:
                        return
                    finally:
                        phases.pop()
                    yield item
            finally:
                close = getattr(gen, "close", None)
                if close is not None:
                    phases.push(label)
                    try:
                        close()
                    finally:
                        phases.pop()

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            phases = self.phases
            if phases is None:
                return fn(*args, **kwargs)
            return traced(fn(*args, **kwargs), phases)

        return wrapper

    def install(self, phases: Phases) -> None:
        self.phases = phases
        for owner, name, _, wrapped in self.swaps:
            _set(owner, name, wrapped)

    def remove(self) -> None:
        for owner, name, original, _ in self.swaps:
            _set(owner, name, original)
        self.phases = None


def _set(owner: Any, key: Any, value: Any) -> None:
    if isinstance(owner, (dict, list)):
        owner[key] = value
    else:
        setattr(owner, key, value)


def _of_tree(module_name: str) -> bool:
    return module_name.partition(".")[0] in ("api", "shared")


def backend_cpu_ms(pids: set[int]) -> float:
    """utime + stime of these PostgreSQL backends, in ms (0 where /proc is not readable)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


class TreeApp:
    """One tree's app, called as WSGI."""

    def __init__(
        self, tree: Path, url: str, cases: dict[str, dict[str, Any]], extra: tuple[tuple[str, str], ...]
    ) -> None:
        from sqlalchemy import event

        import api
        from shared import logging_setup
        from shared.config import Settings

        for module in (api, logging_setup):
            if not Path(cast(str, module.__file__)).resolve().is_relative_to(tree):
                raise SystemExit(f"{module.__name__} was imported from {module.__file__}, not from {tree}")
        # Lines formatted as in production, written nowhere; create_app keeps this handler.
        logging_setup.configure("plain", stream=open(os.devnull, "w"))  # noqa: SIM115
        # Errors (a 500) also to stderr, through the same filters (no token in a line).
        errors = logging_setup.make_handler("plain", sys.stderr)
        errors.setLevel(logging.ERROR)
        logging.getLogger().addHandler(errors)
        self.app = api.create_app(Settings(database_url=url))
        state = self.app.extensions["usage_stats"]
        self.backends: set[int] = set()

        def remember_backend(dbapi_connection: Any, record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.backends.add(int(cursor.fetchone()[0]))

        for engine in {state.engine, state.gateway}:
            event.listen(engine, "connect", remember_backend)
        self.instruments = Instruments(self.app, extra)
        self.cases = cases
        self.environs: dict[str, dict[str, Any]] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        for name in cases:
            self.answers[name] = self.prepare(name)

    def environ(self, case: dict[str, Any], etag: str | None) -> dict[str, Any]:
        from werkzeug.test import EnvironBuilder

        headers = {"Authorization": f"Bearer {case['token']}", "New-Api-User": str(case["user"])}
        if etag is not None:
            headers["If-None-Match"] = etag
        builder = EnvironBuilder(path=case["path"], query_string=case["query"], headers=list(headers.items()))
        try:
            return builder.get_environ()
        finally:
            builder.close()

    def call(self, environ: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
        out: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            out["status"], out["headers"] = status, dict(headers)
            return lambda data: None

        body = self.app(dict(environ), start_response)
        try:
            data = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return out["status"], out["headers"], data

    def prepare(self, name: str) -> dict[str, Any]:
        """The case's environ, after one request that checks its answer."""
        case = self.cases[name]
        base, _, conditional = name.partition(":")
        etag = None
        if conditional:
            status, headers, _ = self.call(self.environ(case, None))
            etag = headers.get("ETag")
        environ = self.environ(case, etag)
        status, headers, data = self.call(environ)
        answer: dict[str, Any] = {
            "status": int(status.split()[0]),
            "bytes": len(data),
            "etag": headers.get("ETag"),
            "if_none_match": etag,
        }
        if answer["status"] not in (200, 304):
            raise SystemExit(
                f"{name}: {status}: {data[:300]!r} (the error is logged above; a schema this tree's code "
                "expects and the data set lacks? --migrated-copy migrates a copy)"
            )
        if answer["status"] == 200 and base.endswith("_json"):
            doc = json.loads(data)
            if not doc.get("success"):
                raise SystemExit(f"{name}: {data[:300]!r}")
            answer["rows"] = len(doc["data"])
        elif answer["status"] == 200:
            answer["rows"] = data.count(b"\r\n") - 1
        self.environs[name] = environ
        return answer

    def batch(self, name: str, n: int, instrumented: bool) -> dict[str, Any]:
        environ = self.environs[name]
        gc.collect()
        phases_ns: dict[str, int] = defaultdict(int)
        cpu = 0
        db_before = backend_cpu_ms(self.backends)
        wall = time.perf_counter()
        for _ in range(n):
            env = dict(environ)
            if instrumented:
                phases = Phases()
                self.instruments.install(phases)
                try:
                    self.call(env)
                finally:
                    self.instruments.remove()
                for label, ns in phases.close().items():
                    phases_ns[label] += ns
            else:
                started = time.thread_time_ns()
                self.call(env)
                cpu += time.thread_time_ns() - started
        wall = time.perf_counter() - wall
        out: dict[str, Any] = {"wall_ms": wall * 1000 / n}
        if instrumented:
            out["labels_ms"] = {k: v / 1e6 / n for k, v in phases_ns.items()}
        else:
            out["cpu_ms"] = cpu / 1e6 / n
            out["db_server_ms"] = (backend_cpu_ms(self.backends) - db_before) / n
        return out


def serve(tree: Path, config: dict[str, Any]) -> None:
    """The loop of a tree's process: one JSON command per line in, one answer out."""
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints must not end up in the answers
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [str(tree)] + [p for p in sys.path if p not in (here, str(ROOT), "")]
    # An editable install (pip install -e) finds its packages after sys.path: a module
    # the tree lacks (api.etag in an older revision) must not come from there.
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in str(getattr(f, "__module__", ""))]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in str(getattr(h, "__module__", ""))]
    sys.path_importer_cache.clear()
    app = TreeApp(tree, config["url"], config["cases"], tuple((t, label) for t, label in config["wrap"]))
    channel.write(
        json.dumps(
            {
                "answers": app.answers,
                "installed": app.instruments.installed,
                "missing": app.instruments.missing,
                "backends": len(app.backends),
            }
        )
        + "\n"
    )
    channel.flush()
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("stop"):
            break
        result = app.batch(command["case"], command["n"], command["instrumented"])
        channel.write(json.dumps(result) + "\n")
        channel.flush()


# --- this process ------------------------------------------------------------------------


class Tree:
    """A tree's process, answering batches."""

    def __init__(self, label: str, path: Path, config: dict[str, Any]) -> None:
        self.label, self.path = label, path
        env = dict(os.environ, PYTHONPATH=str(path), PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", str(path), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(path),
        )
        self.ready = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the process of {self.path} ended (exit {self.proc.wait()}); see above")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def batch(self, case: str, n: int, instrumented: bool) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"case": case, "n": n, "instrumented": instrumented}) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"stop": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True).stdout.strip()


def resolve_tree(spec: str) -> tuple[Path, str, dict[str, Any]]:
    """A tree to measure: a directory (a work tree), or a revision of this repository,
    whose api and shared packages are exported (git archive) to a directory of their
    own. Its path, its label in tables and file names, and what it is."""
    path = Path(spec)
    if path.is_dir():
        path = path.resolve()
        about = {
            "path": str(path),
            "branch": git(path, "rev-parse", "--abbrev-ref", "HEAD"),
            "commit": git(path, "rev-parse", "--short", "HEAD"),
            "dirty": bool(git(path, "status", "--porcelain", "--untracked-files=no", "--", "api", "shared")),
        }
        return path, path.name, about
    commit = git(ROOT, "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
    if not commit:
        raise SystemExit(f"{spec!r} is neither a directory nor a revision of {ROOT}")
    short = commit[:10]
    path = Path(tempfile.gettempdir()) / "api_phases_trees" / short
    if not (path / "api" / "__init__.py").exists():
        path.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit, "api", "shared"], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(path)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SystemExit(f"git archive {commit} failed")
    subject = git(ROOT, "log", "-1", "--format=%s", commit)
    return path, short, {"path": str(path), "revision": spec, "commit": short, "subject": subject, "dirty": False}


def database(args: argparse.Namespace) -> tuple[str, str]:
    """The data set's URL and its name in file names; exits saying how to build it when
    it is absent or incomplete."""
    import sqlalchemy as sa

    from shared.db import make_engine

    from . import data
    from .run import database_url

    if args.db_url:
        url, label = args.db_url, make_engine(args.db_url).url.database or "db"
    else:
        url, label = (
            database_url(data.database_name(args.shape, args.rows)),
            f"{args.shape}_{data.size_label(args.rows)}",
        )
    build = f"python -m bench.run --shape {args.shape} --rows {data.size_label(args.rows).upper()} --figures none"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            meta = json.loads(conn.exec_driver_sql("SELECT info FROM bench_meta").scalar_one())
    except sa.exc.SQLAlchemyError as e:
        raise SystemExit(
            f"no benchmark data set at {engine.url.render_as_string()} ({type(getattr(e, 'orig', None) or e).__name__}): "
            + (f"build it with `{build}`" if not args.db_url else f"a bench.run data set is built by `{build}`")
        ) from None
    finally:
        engine.dispose()
    if not meta.get("complete"):
        raise SystemExit(f"the data set at {engine.url.render_as_string()} is incomplete: `{build} --rebuild`")
    return url, label


def migrated_copy(url: str, tree: Path) -> str:
    """A copy of the data set (<name>_migrated) with `tree`'s schema: the migrations of a
    tree that main lacks are applied to the copy only, so that the original stays as
    main's bench.run expects it. Copied once (pg_dump | pg_restore: other sessions may
    be connected to the original, which CREATE DATABASE ... TEMPLATE would refuse), and
    upgraded by every run's tree (migrations only add: older trees still read it)."""
    from shared.db import make_engine

    from .run import admin_engine, database_url

    source = make_engine(url).url
    name = f"{source.database}_migrated"
    copy = database_url(name)
    with admin_engine().connect() as conn:
        exists = conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %(n)s", {"n": name}).first()
    if exists is None:
        log(f"copying {source.database} to {name}")

        def libpq(u: str) -> str:
            return make_engine(u).url.set(drivername="postgresql").render_as_string(hide_password=False)

        try:
            with admin_engine().connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            dump = subprocess.Popen(["pg_dump", "-Fc", f"--dbname={libpq(url)}"], stdout=subprocess.PIPE)
            subprocess.run(["pg_restore", "--no-owner", f"--dbname={libpq(copy)}"], stdin=dump.stdout, check=True)
            if dump.wait() != 0:
                raise subprocess.CalledProcessError(dump.returncode, "pg_dump")
            with make_engine(copy).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        except BaseException:
            with admin_engine().connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            raise
    log(f"applying the migrations of {tree} to {name}")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from shared.db import make_engine; from shared.migrate import upgrade; "
            "print(upgrade(make_engine(sys.argv[1])), file=sys.stderr)",
            copy,
        ],
        env=dict(os.environ, PYTHONPATH=str(tree)),
        cwd=str(tree),
        check=True,
    )
    return copy


def case_configs(url: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """Figure 3's requests (bench.run): the heaviest user's 30 days by the hour, the site's
    30 days by day as root."""
    from . import data
    from .run import heaviest_user

    end = data.PERIOD_END - 1
    start = end - 30 * DAY + 1
    heavy = heaviest_user(url)
    base = {
        "self_hourly": ("/api/data/self", "hour", heavy),
        "site_daily": ("/api/data/", "day", data.ADMIN_ID),
    }
    out = {}
    for name in names:
        shape, _, fmt = name.partition(":")[0].rpartition("_")
        path, granularity, user = base[shape]
        query = f"granularity={granularity}&start_timestamp={start}&end_timestamp={end}"
        query += "&format=csv" if fmt == "csv" else ""
        out[name] = {"path": path, "query": query, "user": user, "token": data.user_token(user)}
    return out


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4) if values else 0.0


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of per-request ms: the total, the phases, their labels."""
    labels = sorted({label for r in rounds for label in r["labels_ms"]})
    out: dict[str, Any] = {
        "total_ms": median([r["cpu_ms"] for r in rounds]),
        "instrumented_ms": median([sum(r["labels_ms"].values()) for r in rounds]),
        "phases_ms": {
            phase: median([sum(v for k, v in r["labels_ms"].items() if k.split(".")[0] == phase) for r in rounds])
            for phase in PHASES
        },
        "labels_ms": {label: median([r["labels_ms"].get(label, 0.0) for r in rounds]) for label in labels},
        "db_server_ms": median([r["db_server_ms"] for r in rounds]),
        "wall_ms": median([r["wall_ms"] for r in rounds]),
        "total_ms_rounds": [round(r["cpu_ms"], 4) for r in rounds],
    }
    return out


def make_url_database(url: str) -> str | None:
    from shared.db import make_engine

    return make_engine(url).url.database


def ratio(after: float, before: float) -> float | None:
    return round(after / before, 3) if before > 0 else None


def table(results: dict[str, Any], labels: tuple[str, str]) -> str:
    before, after = labels
    head = (
        f"{'case':24} {'tree':16} {'status':>6} {'total':>7} {'instr':>7} "
        + " ".join(f"{p:>9}" for p in PHASES)
        + f" {'db srv':>7}"
    )
    lines = ["CPU ms per request (medians over rounds)", head]
    for case, row in results.items():
        for tree in (before, after):
            s = row[tree]
            cells = " ".join(f"{s['phases_ms'][p]:9.3f}" for p in PHASES)
            lines.append(
                f"{case:24} {tree:16} {row['answers'][tree]['status']:>6} {s['total_ms']:7.3f} "
                f"{s['instrumented_ms']:7.3f} {cells} {s['db_server_ms']:7.2f}"
            )
        r = row["ratio"]
        cells = " ".join(f"{r['phases'][p] if r['phases'][p] is not None else '-':>9}" for p in PHASES)
        lines.append(
            f"{'':24} {'after/bef.':16} {'':>6} {r['total']!s:>7} {r['instrumented']!s:>7} {cells}"
            f"  (paired by round: {r['total_paired']})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(Path(argv[1]).resolve(), json.loads(argv[2]))
        return 0
    from .run import parse_rows

    parser = argparse.ArgumentParser(prog="python -m bench.api_phases", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before",
        default=str(ROOT),
        help="the tree measured as before: a directory or a revision (default: this tree)",
    )
    parser.add_argument(
        "--tree",
        "--after",
        dest="after",
        default=str(ROOT),
        help="the tree measured as after: a directory or a revision",
    )
    parser.add_argument("--shape", default="dense", help="bench.run's data shape")
    parser.add_argument("--rows", type=parse_rows, default=parse_rows("1M"), help="bench.run's data size (1M, 10M)")
    parser.add_argument("--db-url", help="another database of bench.run's data (overrides --shape and --rows)")
    parser.add_argument(
        "--migrated-copy",
        action="store_true",
        help="both trees read a copy of the data set migrated by the after tree (for migrations main lacks)",
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=40, help="requests per batch")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument(
        "--wrap",
        action="append",
        default=[],
        metavar="MODULE:ATTR=LABEL",
        help="one more function to charge to a label (its phase: the label's first part), e.g. api.cache:*=rest.cache",
    )
    parser.add_argument("--out", type=Path, help="the results file (default: bench/results/api_phases_...)")
    args = parser.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")
    (before_path, before_label, before_about), (after_path, after_label, after_about) = map(
        resolve_tree, (args.before, args.after)
    )
    labels = (before_label, after_label)
    if labels[0] == labels[1]:
        labels = (labels[0], f"{labels[1]}-again")
    url, data_label = database(args)
    if args.migrated_copy:
        url = migrated_copy(url, after_path)
    wrap = [item.rpartition("=")[::2] for item in args.wrap]
    if any(":" not in target or not label for target, label in wrap):
        parser.error("--wrap takes module:attribute=label (or module:*=label)")
    config: dict[str, Any] = {"url": url, "cases": case_configs(url, names), "wrap": wrap}
    log(f"data {data_label}; before {before_path}, after {after_path}; {args.rounds} rounds of {args.requests}")
    trees = [Tree(labels[0], before_path, config), Tree(labels[1], after_path, config)]
    for tree in trees:
        log(f"{tree.label}: wrapped {len(tree.ready['installed'])}, missing {tree.ready['missing'] or 'none'}")
        for case, answer in tree.ready["answers"].items():
            log(f"  {case}: {answer}")
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {c: {t.label: [] for t in trees} for c in names}
    try:
        for case in names:  # warm-up: caches, the pool, the statement cache
            for tree in trees:
                tree.batch(case, max(5, args.requests // 4), False)
                tree.batch(case, max(5, args.requests // 4), True)
        for i in range(args.rounds):
            order = trees if i % 2 == 0 else trees[::-1]
            for case in names:
                for tree in order:
                    plain = tree.batch(case, args.requests, False)
                    instrumented = tree.batch(case, args.requests, True)
                    samples[case][tree.label].append({**plain, "labels_ms": instrumented["labels_ms"]})
            log(
                f"round {i + 1}/{args.rounds}: "
                + ", ".join(
                    f"{c} {samples[c][labels[0]][-1]['cpu_ms']:.2f}/{samples[c][labels[1]][-1]['cpu_ms']:.2f} ms"
                    for c in names
                )
            )
    finally:
        for tree in trees:
            tree.stop()
    results: dict[str, Any] = {}
    for case in names:
        row: dict[str, Any] = {t.label: summarize(samples[case][t.label]) for t in trees}
        row["answers"] = {t.label: t.ready["answers"][case] for t in trees}
        b, a = row[labels[0]], row[labels[1]]
        row["ratio"] = {
            "total": ratio(a["total_ms"], b["total_ms"]),
            "instrumented": ratio(a["instrumented_ms"], b["instrumented_ms"]),
            "phases": {p: ratio(a["phases_ms"][p], b["phases_ms"][p]) for p in PHASES},
            "db_server": ratio(a["db_server_ms"], b["db_server_ms"]),
            # Round by round (the two trees ran back to back), then the median: drifts
            # of this machine's load between rounds cancel out.
            "total_paired": median(
                [x["cpu_ms"] / y["cpu_ms"] for x, y in zip(samples[case][labels[1]], samples[case][labels[0]])]
            ),
        }
        results[case] = row
    report = {
        "data": data_label,
        "database": make_url_database(url),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rounds": args.rounds,
        "requests_per_batch": args.requests,
        "before": {**before_about, "label": labels[0], "wrapped": trees[0].ready["installed"]},
        "after": {**after_about, "label": labels[1], "wrapped": trees[1].ready["installed"]},
        "missing": {t.label: t.ready["missing"] for t in trees},
        "users": {case: c["user"] for case, c in config["cases"].items()},
        "cases": results,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    out = args.out or RESULTS / f"api_phases_{data_label}_{before_label}_vs_{after_label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results, labels))
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
