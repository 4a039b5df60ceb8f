"""The chart page at /: served by the API with its vendored chart library (no CDN), and
drawn in a real headless Chromium (Debian's `chromium`) from the API's own answers.

The browser tests are marked integration: without chromium they skip locally, and fail
in CI (USAGE_STATS_REQUIRE_SERVICES=1, tests/conftest.py). Two of them load a page and
read the DOM Chromium dumps (--dump-dom); the others drive Chromium over the DevTools
protocol on a pipe (`Browser` below: no client library) to change the controls, see
the requests the page made, download the CSV and take full-page screenshots. The
screenshots are saved in the test's tmp directory; with USAGE_STATS_SCREENSHOT=<path>
(e.g. docs/chart.png) the administrator's view of `usage-stats up --demo` is copied there.

The truth the page is checked against is computed here from the raw logs and the names
this file writes into `tokens` and `channels` (a Python GROUP BY), not from the API.
"""

from __future__ import annotations

import base64
import csv
import fcntl
import html.parser
import json
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
import urllib.request
import zlib
from collections import defaultdict
from fnmatch import fnmatch
from pathlib import Path

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from api import create_app, params
from api.config import ApiLimits
from api.routes import PAGE_FILES, STATIC
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from shared.rollup import tick
from tests.api_support import add_user, bucket_of, committed_logs, expected, make_api
from tests.logdata import insert, log, utc

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TZ = "Asia/Shanghai"


# --- served files ----------------------------------------------------------------------


def test_page_is_served_at_the_root_with_only_local_scripts(sqlite_engine):
    api = make_api(sqlite_engine, tz=TZ)
    response = api.client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    text = response.get_data(as_text=True)
    assert f'<meta name="usage-stats-timezone" content="{TZ}">' in text
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', text)
    assert scripts == ["static/vendor/chart.umd.min.js", "static/app.js"]
    assert not re.search(r'(src|href)="(https?:)?//', text), "nothing may load from another site"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    for name in ("app.js", "vendor/chart.umd.min.js", "style.css"):
        r = api.client.get(f"/static/{name}")
        assert r.status_code == 200 and r.get_data() == (STATIC / name).read_bytes(), name
    assert api.client.get("/static/app.js").mimetype in ("text/javascript", "application/javascript")
    # No query string reaches the token: the page reads it from the URL fragment only.
    app_js = (STATIC / "app.js").read_text()
    assert "new URLSearchParams(location.hash" in app_js and "new URLSearchParams(location.search" not in app_js


def test_page_says_where_the_token_is_and_forgets_the_fragment():
    page = (STATIC / "index.html").read_text()
    # new-api's system access token, from its personal settings; not an API key.
    assert "Personal settings" in page and "system access token" in page and "sk-" in page
    app_js = (STATIC / "app.js").read_text()
    # Read from the fragment, then removed from the address bar without a history entry.
    assert 'history.replaceState(null, "", location.pathname + location.search)' in app_js
    assert 'startsWith("sk-")' in app_js


def test_page_has_nothing_the_content_security_policy_blocks():
    """style-src 'self' and script-src 'self': no inline script, style or handler in the
    page, and no style attribute or HTML string written by the script (styles are set
    through the CSSOM, which the policy allows)."""
    page = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and "<style" not in page
    assert not re.search(r"\sstyle=", page) and not re.search(r"\son[a-z]+=", page)
    app_js = (STATIC / "app.js").read_text()
    for blocked in ("innerHTML", "outerHTML", 'setAttribute("style"', "eval(", "new Function"):
        assert blocked not in app_js, blocked


class _Controls(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.group_by: list[str] = []
        self.filters: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "fieldset":
            self._in = attrs.get("id")
        elif tag == "input" and self._in == "group-by":
            self.group_by.append(attrs["value"])
        elif tag == "input" and self._in == "filters":
            self.filters.append(attrs["name"])
            assert attrs["id"] == f"f-{attrs['name']}"

    def handle_endtag(self, tag):
        if tag == "fieldset":
            self._in = None


def test_controls_are_the_apis_parameters():
    """Each group-by box is a value of group_by, each filter field a filter parameter
    of /api/data/ by its name: the page sends what the API takes (username has its own
    field, with the 'one user' view)."""
    controls = _Controls()
    controls.feed((STATIC / "index.html").read_text())
    assert sorted(controls.group_by) == sorted(params.GROUP_BY)
    assert sorted(controls.filters) == sorted(set(params.FILTERS) - {"token_name"})


def test_chart_library_is_vendored_with_its_license():
    package = json.loads((STATIC / "package.json").read_text())
    pinned = package["dependencies"]["chart.js"]
    lock = json.loads((STATIC / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/chart.js"]["version"] == pinned
    bundle = (STATIC / "vendor/chart.umd.min.js").read_text()
    assert bundle.startswith("/*!\n * Chart.js v" + pinned)
    assert "MIT" in (STATIC / "vendor/chart.js.LICENSE.md").read_text()
    assert "MIT" in (STATIC / "vendor/kurkle-color.LICENSE.md").read_text()
    assert (STATIC / "vendor/VERSION").read_text().startswith(f"chart.js {pinned}")


def test_pip_install_ships_the_page():
    # [tool.setuptools.package-data] must cover every file the page serves, or an
    # installed (non-editable) API would answer 404 for them.
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["api"]
    for name in sorted(PAGE_FILES | {"index.html"}):
        assert any(fnmatch(f"static/{name}", pattern) for pattern in data), name
        assert (STATIC / name).is_file(), name


# --- the data ------------------------------------------------------------------------------


MODELS = ("gpt-4o", "claude-3-5-sonnet", "deepseek-chat", "gpt-4o-mini")
MODEL_WEIGHTS = (5, 3, 2, 1)
# Which channels serve which model.
ROUTES = {"gpt-4o": (1, 2, 5), "claude-3-5-sonnet": (3, 5), "deepseek-chat": (4,), "gpt-4o-mini": (1, 2)}
CHANNELS = {1: "openai-main", 2: "azure-east", 3: "anthropic", 4: "deepseek-direct", 5: "openrouter"}
# user id -> (username, role, group, their keys {id: name}, weight)
ADMIN, ALICE = 1, 2
PEOPLE = {
    ADMIN: ("admin", m.ROLE_ROOT, "default", {11: "admin-ops"}, 1),
    ALICE: ("alice", m.ROLE_USER, "vip", {21: "alice-laptop", 22: "alice-ci"}, 8),
    3: ("bob", m.ROLE_USER, "default", {31: "bob-prod"}, 5),
    4: ("carol", m.ROLE_USER, "svip", {41: "carol-app", 42: "carol-batch"}, 4),
    5: ("dave", m.ROLE_USER, "default", {51: "dave"}, 2),
    6: ("erin", m.ROLE_USER, "vip", {61: "erin-notebook"}, 2),
    7: ("frank", m.ROLE_USER, "default", {71: "frank-test"}, 1),
}
TOKEN_NAMES = {tid: name for _, _, _, keys, _ in PEOPLE.values() for tid, name in keys.items()}
START, END = utc(2024, 11, 1), utc(2024, 11, 15)


@pytest.fixture
def served(tmp_path):
    """The API on a SQLite file with two weeks of logs of seven users, their keys,
    groups and five channels, part of them rolled up, served by werkzeug on a free port
    in a thread. Yields (base URL, {user id: access token}, engine)."""
    url = f"sqlite:///{tmp_path / 'page.db'}"
    engine = make_engine(url)
    upgrade(engine)
    tokens = {uid: add_user(engine, uid, name, role=role) for uid, (name, role, *_) in PEOPLE.items()}
    with engine.begin() as conn:
        conn.execute(
            sa.insert(m.tokens),
            [{"id": tid, "user_id": tid // 10, "key": f"sk-secret-{tid}", "name": n} for tid, n in TOKEN_NAMES.items()],
        )
        conn.execute(sa.insert(m.channels), [{"id": i, "name": n, "key": "secret"} for i, n in CHANNELS.items()])
    rnd = random.Random(42)
    users = list(PEOPLE)
    rows = []
    for _ in range(1500):
        uid = rnd.choices(users, [p[4] for p in PEOPLE.values()])[0]
        name, _, group, keys, _ = PEOPLE[uid]
        model = rnd.choices(MODELS, MODEL_WEIGHTS)[0]
        token_id = rnd.choice(list(keys))
        rows.append(
            log(
                user_id=uid,
                username=name,
                created_at=rnd.randrange(START, END - 86400),
                model=model,
                quota=rnd.randrange(1000, 400_000),
                prompt=rnd.randrange(10, 4000),
                completion=rnd.randrange(10, 1500),
                token_id=token_id,
                token_name=TOKEN_NAMES[token_id],
                channel=rnd.choice(ROUTES[model]),
                # Mostly the user's group; now and then a request in another one.
                group=group if rnd.random() < 0.85 else rnd.choice(("default", "vip", "svip")),
                kind=m.LOG_CONSUME if rnd.random() < 0.97 else m.LOG_ERROR,
            )
        )
    insert(engine, rows)
    settings = Settings(database_url=url, stats_timezone=TZ, rollup_batch_size=1200)
    tick(engine, settings)  # the rest is the real-time tail
    app = create_app(settings, engine=engine, limits=ApiLimits())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", tokens, engine
    finally:
        server.shutdown()
        thread.join(10)
        engine.dispose()


def consumed(engine) -> list[dict]:
    return [lg for lg in committed_logs(engine) if lg["type"] == m.LOG_CONSUME and lg["created_at"] is not None]


# How the page names a series of each dimension (its own names from `tokens`, `channels`).
LABELS = {
    "model": lambda lg: lg["model_name"] or "(no model)",
    "token": lambda lg: f"{TOKEN_NAMES[lg['token_id']]} #{lg['token_id']}",
    "channel": lambda lg: f"{CHANNELS[lg['channel_id']]} #{lg['channel_id']}",
    "group": lambda lg: lg["group"] or "(no group)",
    "user": lambda lg: f"{PEOPLE[lg['user_id']][0]} #{lg['user_id']}",
}
# The filter parameters, as the log's column.
LOG_COLUMN = {"model_name": "model_name", "token_id": "token_id", "channel": "channel_id", "group": "group"}


class Truth:
    """The answer the page should show for the consume logs whose bucket starts in
    [start, end], of `user_id` if given, matching `filters` (parameter -> value as the
    page sends it), split by `dims`: `series` {label: {count, quota, tokens}}, `rows`
    the (bucket, label) pairs, `covered` the instants from the first bucket's start to
    the last one's end (days: the granularity of these tests)."""

    def __init__(self, logs, dims, start, end, *, user_id=None, filters=None):
        self.series: dict[str, dict[str, int]] = defaultdict(lambda: {"count": 0, "quota": 0, "tokens": 0})
        self.rows: set[tuple[int, str]] = set()
        for lg in logs:
            bucket = bucket_of(lg["created_at"], "day", TZ)
            if not start <= bucket <= end or (user_id is not None and lg["user_id"] != user_id):
                continue
            if any(str(lg[LOG_COLUMN[k]]) != v for k, v in (filters or {}).items()):
                continue
            label = " · ".join(LABELS[d](lg) for d in dims)
            s = self.series[label]
            s["count"] += 1
            s["quota"] += lg["quota"]
            s["tokens"] += lg["prompt_tokens"] + lg["completion_tokens"]
            self.rows.add((bucket, label))
        self.series = dict(self.series)
        buckets = [b for b, _ in self.rows]
        self.covered = (min(buckets), max(buckets) + 86400 - 1)


def flow_truth(logs, stages, start, end, *, user_id=None, filters=None, max_nodes=8):
    """The flow's nodes per stage, as {stage: {name: quota}}: consume logs with a group,
    in hours starting in [start, end]; per stage the largest max_nodes - 1 and the rest
    as one node "<n> others" when there are more than max_nodes."""
    nodes: dict[str, dict[str, int]] = {s: defaultdict(int) for s in stages}
    for lg in logs:
        if not lg["group"] or not start <= lg["created_at"] - lg["created_at"] % 3600 <= end:
            continue
        if user_id is not None and lg["user_id"] != user_id:
            continue
        if any(str(lg[LOG_COLUMN[k]]) != v for k, v in (filters or {}).items()) or lg["quota"] <= 0:
            continue
        for s in stages:
            nodes[s][LABELS[s](lg)] += lg["quota"]
    out = {}
    for s, values in nodes.items():
        ranked = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
        if len(ranked) > max_nodes:
            rest = ranked[max_nodes - 1 :]
            ranked = [*ranked[: max_nodes - 1], (f"{len(rest)} others", sum(v for _, v in rest))]
        out[s] = dict(ranked)
    return out


# --- in the browser: the DOM Chromium dumps ------------------------------------------------


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs Debian's chromium)")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            "--window-size=1200,900",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=15000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


class _Dom(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.body: dict = {}
        self.rows: list[dict] = []
        self.status = ""
        self._in_status = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        elif tag == "tr" and "data-series" in attrs:
            self.rows.append(attrs)
        self._in_status = attrs.get("id") == "status"

    def handle_data(self, data):
        if self._in_status:
            self.status += data


def dom(tmp_path, url) -> _Dom:
    result = chromium(tmp_path, url, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = _Dom()
    parsed.feed(result.stdout)
    return parsed


def png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the first rows) of an 8-bit PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    return width, height, len(set(pixels[: len(pixels) // 2]))


@pytest.mark.integration
def test_the_page_draws_the_charts_from_the_api(served, tmp_path):
    base, tokens, engine = served
    fragment = f"#token={tokens[ADMIN]}&user={ADMIN}&scope=site&granularity=day&start={START}&end={END}"
    page = dom(tmp_path, f"{base}/{fragment}")
    assert page.body.get("data-state") == "drawn", (page.body, page.status)

    # What it drew is the API's answer: the truth from the raw logs, in Shanghai days.
    logs = committed_logs(engine)
    truth = expected(logs, "day", TZ, START, END, site_wide=True)
    models = {}
    for row in truth:
        t = models.setdefault(row["model_name"], {"count": 0, "quota": 0, "tokens": 0})
        t["count"] += row["count"]
        t["quota"] += row["quota"]
        t["tokens"] += row["token_used"]
    assert int(page.body["data-datasets"]) == len(models) == len(MODELS)
    assert int(page.body["data-buckets"]) == len({r["created_at"] for r in truth}) >= 13
    assert int(page.body["data-rows"]) == len(truth)
    assert {
        r["data-series"]: {
            "count": int(r["data-count"]),
            "quota": int(r["data-quota"]),
            "tokens": int(r["data-tokens"]),
        }
        for r in page.rows
    } == models
    # Pixels in the models' colours on both canvases: bars and slices were painted.
    assert int(page.body["data-bar-pixels"]) > 5000 and int(page.body["data-pie-pixels"]) > 5000, page.body


@pytest.mark.integration
def test_the_page_says_why_when_the_api_refuses(served, tmp_path):
    base, tokens, _ = served
    page = dom(tmp_path, f"{base}/#token={'0' * 32}&user=1&granularity=day")
    assert page.body.get("data-state") == "error" and "invalid access token" in page.status, (page.body, page.status)
    # A week in another zone than STATS_TIMEZONE is refused by the API: its 400, in the page.
    page = dom(
        tmp_path, f"{base}/#token={tokens[ADMIN]}&user=1&granularity=week&tz=Asia/Kolkata&start={START}&end={END}"
    )
    assert page.body.get("data-state") == "error" and "STATS_TIMEZONE" in page.status, (page.body, page.status)
    # A filter the API refuses (a key id that is no number): its message, in the page.
    page = dom(tmp_path, f"{base}/#token={tokens[ALICE]}&user={ALICE}&token_id=abc&start={START}&end={END}")
    assert page.body.get("data-state") == "error" and "token_id" in page.status, (page.body, page.status)


# --- in the browser: driven over the DevTools protocol -------------------------------------


def _above_9(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe
    (--remote-debugging-pipe: NUL-separated JSON, commands on the child's fd 3, answers
    and events on its fd 4). One page at a time; `events` keeps every event received."""

    def __init__(self, tmp_path: Path, width: int = 1200, height: int = 900):
        if CHROMIUM is None:
            pytest.skip("chromium is not installed (CI installs Debian's chromium)")
        self.width, self.height = width, height
        commands_r, self._commands = os.pipe()
        self._answers, answers_w = os.pipe()
        # A Python trampoline puts the pipe ends on fds 3 and 4 of the browser (no
        # preexec_fn: the server thread of the test is running; no shell: dash takes
        # single-digit fds only); first moved above 9, so that neither is 3 or 4 already.
        commands_r, answers_w = (_above_9(fd) for fd in (commands_r, answers_w))
        trampoline = (
            f"import os, sys; os.dup2({commands_r}, 3); os.dup2({answers_w}, 4); os.execv(sys.argv[1], sys.argv[1:])"
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                trampoline,
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                f"--window-size={width},{height}",
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            pass_fds=(commands_r, answers_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_r)
        os.close(answers_w)
        self._buffer = b""
        self._next_id = 0
        self._results: dict[int, dict] = {}
        self.events: list[dict] = []
        self.session: str | None = None
        self.logs: list[dict] = []  # the test's truth, for check_flow

    def close(self) -> None:
        try:
            self.call("Browser.close", session=None, timeout=10)
            self.proc.wait(timeout=20)
        except (TimeoutError, RuntimeError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._commands)
            os.close(self._answers)

    def _receive(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([self._answers], [], [], remaining)[0]:
            raise TimeoutError("chromium did not answer in time")
        chunk = os.read(self._answers, 1 << 20)
        if not chunk:
            raise RuntimeError("chromium closed its end of the pipe")
        self._buffer += chunk
        while b"\0" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\0", 1)
            message = json.loads(raw)
            if "id" in message:
                self._results[message["id"]] = message
            else:
                self.events.append(message)

    def call(self, method: str, params: dict | None = None, *, session: str | None = "page", timeout: float = 60):
        self._next_id += 1
        n = self._next_id
        message: dict = {"id": n, "method": method, "params": params or {}}
        if session == "page":
            session = self.session
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while n not in self._results:
            self._receive(deadline)
        answer = self._results.pop(n)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=None)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=None)[
            "sessionId"
        ]
        self.call("Network.enable")
        self.call("Page.enable")
        self.call("Log.enable")
        self.call("Runtime.enable")
        self._viewport(self.height)
        self.call("Page.navigate", {"url": url})

    def _viewport(self, height: int) -> None:
        metrics = {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics)

    def js(self, expression: str):
        """The value of `expression` in the page (a promise is awaited)."""
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false: {expression}")
            time.sleep(0.1)
        return value

    def drawn(self) -> dict:
        """Waits until the page has drawn (or failed), and returns <body>'s data-*."""
        self.wait_for('["drawn", "error"].includes(document.body?.dataset.state)')
        return self.js("({...document.body.dataset, status: document.getElementById('status').textContent})")

    def problems(self) -> list[str]:
        """Errors the page met: uncaught exceptions, console errors, and what the
        browser logged as an error (a Content-Security-Policy violation, a failed load)."""
        found = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(str(p["exceptionDetails"]))
            elif method == "Runtime.consoleAPICalled" and p["type"] == "error":
                found.append(str(p["args"]))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                found.append(p["entry"]["text"])
        return found

    def requested(self, since: int = 0) -> list[urllib.parse.SplitResult]:
        """The API requests the page made (events from index `since` on)."""
        urls = [
            e["params"]["request"]["url"]
            for e in self.events[since:]
            if e.get("method") == "Network.requestWillBeSent" and "/api/" in e["params"]["request"]["url"]
        ]
        return [urllib.parse.urlsplit(u) for u in urls]

    def download(self, click: str, directory: Path, timeout: float = 60) -> Path:
        """Runs `click` in the page and returns the file the browser then saved."""
        directory.mkdir(exist_ok=True)
        behaviour = {"behavior": "allow", "downloadPath": str(directory), "eventsEnabled": True}
        self.call("Browser.setDownloadBehavior", behaviour, session=None)
        since = len(self.events)
        self.js(click)
        deadline = time.monotonic() + timeout
        name = None
        while True:
            for e in self.events[since:]:
                if e.get("method") == "Browser.downloadWillBegin":
                    name = e["params"]["suggestedFilename"]
                elif e.get("method") == "Browser.downloadProgress" and e["params"]["state"] == "completed":
                    assert name is not None
                    return directory / name
                elif e.get("method") == "Browser.downloadProgress" and e["params"]["state"] == "canceled":
                    raise RuntimeError("the download was cancelled")
            since = len(self.events)
            self._receive(deadline)

    def screenshot(self, path: Path) -> None:
        """The whole page, as tall as its content, `width` wide."""
        height = self.js("document.documentElement.scrollHeight")
        self._viewport(height)
        # Two frames after the resize (the flow redraws itself on resize).
        time.sleep(0.5)
        self.js("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"]))
        self._viewport(self.height)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path)
    try:
        yield b
    finally:
        b.close()


def table(browser: Browser) -> dict[str, dict[str, int]]:
    rows = browser.js("[...document.querySelectorAll('#series tbody tr')].map((tr) => ({...tr.dataset}))")
    return {r["series"]: {k: int(r[k]) for k in ("count", "quota", "tokens")} for r in rows}


def flow_nodes(browser: Browser) -> dict[str, dict[str, int]]:
    rects = browser.js("[...document.querySelectorAll('#flow svg rect.node')].map((r) => ({...r.dataset}))")
    nodes: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rects:
        nodes[r["stage"]][r["name"]] = int(r["quota"])
    return dict(nodes)


def submit(browser: Browser, group_by: tuple[str, ...], **filters: str) -> int:
    """Sets the group-by boxes and the filter fields as a user would, presses Show, and
    returns the index of the first event after it."""
    since = len(browser.events)
    browser.js(
        f"""(() => {{
          const by = {json.dumps(group_by)}, filters = {json.dumps(filters)};
          for (const box of document.querySelectorAll('#group-by input')) box.checked = by.includes(box.value);
          for (const input of document.querySelectorAll('#filters input')) input.value = filters[input.name] || "";
          document.querySelector('#controls button[type=submit]').click();
        }})()"""
    )
    return since


def query(url: urllib.parse.SplitResult) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(url.query))


def api_get(base: str, token: str, user: int, path_and_query: str) -> bytes:
    request = urllib.request.Request(base + path_and_query, headers={"Authorization": token, "New-Api-User": str(user)})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        return response.read()


def save_screenshot(browser: Browser, path: Path) -> None:
    browser.screenshot(path)
    width, height, colours = png_size_and_colours(path)
    assert width == browser.width and height > 900 and colours > 50


def check_flow(browser: Browser, since: int, path: str, stages, truth: Truth, **kw) -> None:
    """The flow the page asked for (the range its charts cover) and drew (the truth)."""
    flow = next(u for u in browser.requested(since) if u.path == path)
    first, last = truth.covered
    assert query(flow) == {"start_timestamp": str(first), "end_timestamp": str(last)}
    assert browser.js("document.getElementById('flow-card').dataset.state") == "drawn"
    assert flow_nodes(browser) == flow_truth(browser.logs, stages, first, last, **kw)
    assert browser.js("document.querySelectorAll('#flow svg path.band').length") >= 2


@pytest.mark.integration
def test_admin_controls_flow_ranking_and_csv(served, browser, tmp_path):
    """As root, site-wide: the group-by boxes and filters change what is asked of
    /api/data/; the table, the flow (keys -> models -> channels) and the ranking are the
    raw logs' truth; the CSV download is the rows shown."""
    base, tokens, engine = served
    logs = browser.logs = consumed(engine)
    browser.open(f"{base}/#token={tokens[ADMIN]}&user={ADMIN}&scope=site&granularity=day&start={START}&end={END}")
    state = browser.drawn()
    assert state["state"] == "drawn", state
    first = browser.requested()
    assert {u.path for u in first} == {"/api/data/", "/api/data/flow", "/api/data/users"}
    data = next(u for u in first if u.path == "/api/data/")
    time_params = {"granularity": "day", "start_timestamp": str(START), "end_timestamp": str(END)}
    assert query(data) == {**time_params, "group_by": "model"}
    truth = Truth(logs, ("model",), START, END)
    assert table(browser) == truth.series and int(state["rows"]) == len(truth.rows)

    # Per-user ranking: the ten users with the most quota over the same days.
    assert query(next(u for u in first if u.path == "/api/data/users")) == time_params
    per_user: dict[int, int] = defaultdict(int)
    for lg in logs:
        if START <= bucket_of(lg["created_at"], "day", TZ) <= END:
            per_user[lg["user_id"]] += lg["quota"]
    top = sorted(per_user.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    ranking = browser.js("({...document.getElementById('ranking-card').dataset})")
    assert ranking["state"] == "drawn", ranking
    assert ranking["users"] == ",".join(str(u) for u, _ in top) and ranking["quotas"] == ",".join(
        str(q) for _, q in top
    )
    assert browser.js("!document.getElementById('ranking-card').hidden")
    assert browser.js("(() => { const c = document.getElementById('ranking'); return c.width * c.height > 0 })()")

    # Root's flow: keys -> models -> channels, over the days the charts show.
    check_flow(browser, 0, "/api/data/flow", ("token", "model", "channel"), truth)
    assert "2 others" in flow_nodes(browser)["token"]  # nine keys: seven, and the rest

    # Split by channel and group, only gpt-4o: the request says so, the table is the truth.
    since = submit(browser, ("channel", "group"), model_name="gpt-4o")
    state = browser.drawn()
    assert state["state"] == "drawn", state
    data = next(u for u in browser.requested(since) if u.path == "/api/data/")
    assert query(data) == {**time_params, "group_by": "channel,group", "model_name": "gpt-4o"}
    truth = Truth(logs, ("channel", "group"), START, END, filters={"model_name": "gpt-4o"})
    assert table(browser) == truth.series and int(state["rows"]) == len(truth.rows)
    assert int(state["datasets"]) == min(len(truth.series), 10) and int(state["barPixels"]) > 2000, state
    # The flow keeps the rows of gpt-4o (the flow routes take no filters: the page does).
    stages = ("token", "model", "channel")
    check_flow(browser, since, "/api/data/flow", stages, truth, filters={"model_name": "gpt-4o"})
    assert list(flow_nodes(browser)["model"]) == ["gpt-4o"]

    # By user and key, on one channel and group.
    since = submit(browser, ("user", "token"), channel="1", group="default")
    state = browser.drawn()
    data = next(u for u in browser.requested(since) if u.path == "/api/data/")
    assert query(data) == {**time_params, "group_by": "user,token", "channel": "1", "group": "default"}
    truth = Truth(logs, ("user", "token"), START, END, filters={"channel": "1", "group": "default"})
    assert table(browser) == truth.series and int(state["rows"]) == len(truth.rows)

    # The CSV download: the request shown plus format=csv, and the same rows as its JSON.
    since = len(browser.events)
    saved = browser.download("document.getElementById('csv').click()", tmp_path / "downloads")
    asked = next(u for u in browser.requested(since) if u.path == "/api/data/")
    assert query(asked) == {**query(data), "format": "csv"}
    assert saved.name == f"usage-site-day-{START}-{END}.csv"
    with saved.open(newline="", encoding="utf-8") as f:
        downloaded = list(csv.DictReader(f))
    answer = json.loads(api_get(base, tokens[ADMIN], ADMIN, f"{data.path}?{data.query}"))["data"]
    assert downloaded == [{k: str(v) for k, v in row.items()} for row in answer]
    assert {
        (int(r["created_at"]), f"{r['username']} #{r['user_id']} · {r['token_name']} #{r['token_id']}")
        for r in downloaded
    } == truth.rows

    # More series than colours: the largest nine, then one "others" series.
    since = submit(browser, ("model", "token", "channel"))
    state = browser.drawn()
    truth = Truth(logs, ("model", "token", "channel"), START, END)
    assert len(truth.series) > 10 and int(state["datasets"]) == 10
    assert table(browser) == truth.series
    legend = browser.js("Chart.getChart('bars').data.datasets.map((d) => d.label)")
    assert legend[-1] == f"{len(truth.series) - 9} others"

    # Back to the models, for a screenshot to look at.
    submit(browser, ("model",))
    assert browser.drawn()["state"] == "drawn"
    save_screenshot(browser, tmp_path / "admin.png")
    assert browser.problems() == []


@pytest.mark.integration
def test_user_view_keys_groups_models(served, browser, tmp_path):
    """A common user: their own rows from /api/data/self split by key, their flow keys ->
    groups -> models from /api/data/flow/self, no ranking and no split by user."""
    base, tokens, engine = served
    logs = browser.logs = consumed(engine)
    browser.open(f"{base}/#token={tokens[ALICE]}&user={ALICE}&granularity=day&start={START}&end={END}&group_by=token")
    state = browser.drawn()
    assert state["state"] == "drawn", state
    asked = browser.requested()
    assert {u.path for u in asked} == {"/api/data/self", "/api/data/flow/self"}
    data = next(u for u in asked if u.path == "/api/data/self")
    time_params = {"granularity": "day", "start_timestamp": str(START), "end_timestamp": str(END)}
    assert query(data) == {**time_params, "group_by": "token"}
    truth = Truth(logs, ("token",), START, END, user_id=ALICE)
    assert set(truth.series) == {"alice-laptop #21", "alice-ci #22"}
    assert table(browser) == truth.series and int(state["rows"]) == len(truth.rows)
    assert int(state["barPixels"]) > 2000 and int(state["piePixels"]) > 2000, state
    check_flow(browser, 0, "/api/data/flow/self", ("token", "group", "model"), truth, user_id=ALICE)
    assert browser.js("document.getElementById('ranking-card').hidden")
    assert browser.js("document.querySelector('#group-by input[value=user]').disabled")

    # A key filter: the request carries it, and the flow keeps only that key.
    since = submit(browser, ("model", "group"), token_id="22")
    state = browser.drawn()
    data = next(u for u in browser.requested(since) if u.path == "/api/data/self")
    assert query(data) == {**time_params, "group_by": "model,group", "token_id": "22"}
    truth = Truth(logs, ("model", "group"), START, END, user_id=ALICE, filters={"token_id": "22"})
    assert table(browser) == truth.series and int(state["rows"]) == len(truth.rows)
    stages = ("token", "group", "model")
    check_flow(browser, since, "/api/data/flow/self", stages, truth, user_id=ALICE, filters={"token_id": "22"})
    assert list(flow_nodes(browser)["token"]) == ["alice-ci #22"]

    submit(browser, ("model",))
    assert browser.drawn()["state"] == "drawn"
    save_screenshot(browser, tmp_path / "user.png")
    assert browser.problems() == []


@pytest.mark.integration
def test_up_prints_links_that_open_drawn_pages(browser, tmp_path):
    """A new user's first run: `usage-stats up --demo`, then the links it prints (a
    user's, an administrator's), in a browser. Beat's ticks are an hour apart here: what
    is drawn was rolled up by `up` itself before it started the services (and the
    real-time tail). The administrator's page is the README's screenshot."""
    from tests.faults.servers import free_port, service_env

    port = free_port()
    env = service_env(ROLLUP_INTERVAL_SECONDS=3600)
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "up", "--demo", "--days", "2", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def printed(prefix: str) -> str | None:
        return next((x.split(prefix, 1)[1].strip() for x in list(lines) if x.strip().startswith(prefix)), None)

    try:
        deadline = time.monotonic() + 90
        while printed("site-wide, as the admin:") is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        user, admin = printed("chart page:"), printed("site-wide, as the admin:")
        for link in (user, admin):
            assert link is not None and link.startswith(f"http://127.0.0.1:{port}/#token="), "".join(lines)
        for link, scope in ((user, "self"), (admin, "site")):
            browser.open(link)
            state = browser.drawn()
            assert state["state"] == "drawn" and state["scope"] == scope, (state, "".join(lines))
            assert int(state["rows"]) > 0 and int(state["barPixels"]) > 5000, state
            assert browser.js("document.getElementById('flow-card').dataset.state") == "drawn"
        assert browser.js("document.getElementById('ranking-card').dataset.state") == "drawn"
        shot = tmp_path / "demo.png"
        save_screenshot(browser, shot)
        if os.environ.get("USAGE_STATS_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["USAGE_STATS_SCREENSHOT"])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    assert proc.returncode == 0, "".join(lines)
