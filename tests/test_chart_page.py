"""The chart page at /: served by the API with its vendored chart library (no CDN), and
drawn in a real headless Chromium (Debian's `chromium`) from the API's own JSON.

The browser test is marked integration: without chromium it skips locally, and fails in
CI (USAGE_STATS_REQUIRE_SERVICES=1, tests/conftest.py). It saves its screenshot in the
test's tmp directory; with USAGE_STATS_SCREENSHOT=<path> (e.g. docs/chart.png) it copies
it there too.
"""

from __future__ import annotations

import html.parser
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import tomllib
import zlib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from api import create_app
from api.config import ApiLimits
from api.routes import PAGE_FILES, STATIC
from shared import models as m
from shared.config import Settings
from shared.db import make_engine
from shared.migrate import upgrade
from shared.rollup import tick
from tests.api_support import add_user, committed_logs, expected, make_api
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


def test_chart_library_is_vendored_with_its_license():
    package = __import__("json").loads((STATIC / "package.json").read_text())
    pinned = package["dependencies"]["chart.js"]
    lock = __import__("json").loads((STATIC / "package-lock.json").read_text())
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


# --- in the browser ----------------------------------------------------------------------


MODELS = ("gpt-4o", "claude-3-5-sonnet", "deepseek-chat", "gpt-4o-mini")
START, END = utc(2024, 11, 1), utc(2024, 11, 15)


@pytest.fixture
def served(tmp_path):
    """The API on a SQLite file with two weeks of logs, part of them rolled up, served by
    werkzeug on a free port in a thread."""
    url = f"sqlite:///{tmp_path / 'page.db'}"
    engine = make_engine(url)
    upgrade(engine)
    token = add_user(engine, 1, "admin", role=m.ROLE_ROOT)
    rnd = random.Random(42)
    weights = (5, 3, 2, 1)
    insert(
        engine,
        [
            log(
                user_id=rnd.choice((1, 2, 3)),
                created_at=rnd.randrange(START, END - 86400),
                model=rnd.choices(MODELS, weights)[0],
                quota=rnd.randrange(1000, 400_000),
                prompt=rnd.randrange(10, 4000),
                completion=rnd.randrange(10, 1500),
            )
            for _ in range(1500)
        ],
    )
    settings = Settings(database_url=url, stats_timezone=TZ, rollup_batch_size=1200)
    tick(engine, settings)  # the rest is the real-time tail
    app = create_app(settings, engine=engine, limits=ApiLimits())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", token, engine
    finally:
        server.shutdown()
        thread.join(10)
        engine.dispose()


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
        elif tag == "tr" and "data-model" in attrs:
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
    base, token, engine = served
    fragment = f"#token={token}&user=1&scope=site&granularity=day&start={START}&end={END}"
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
        r["data-model"]: {"count": int(r["data-count"]), "quota": int(r["data-quota"]), "tokens": int(r["data-tokens"])}
        for r in page.rows
    } == models
    # Pixels in the models' colours on both canvases: bars and slices were painted.
    assert int(page.body["data-bar-pixels"]) > 5000 and int(page.body["data-pie-pixels"]) > 5000, page.body

    shot = tmp_path / "chart.png"
    result = chromium(tmp_path, f"{base}/{fragment}", f"--screenshot={shot}")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    width, height, colours = png_size_and_colours(shot)
    assert (width, height) == (1200, 900) and colours > 50
    if os.environ.get("USAGE_STATS_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["USAGE_STATS_SCREENSHOT"])


@pytest.mark.integration
def test_the_page_says_why_when_the_api_refuses(served, tmp_path):
    base, token, _ = served
    page = dom(tmp_path, f"{base}/#token={'0' * 32}&user=1&granularity=day")
    assert page.body.get("data-state") == "error" and "invalid access token" in page.status, (page.body, page.status)
    # A common user's token on the site-wide view: the API's 403, in the page.
    page = dom(tmp_path, f"{base}/#token={token}&user=1&granularity=week&tz=Asia/Kolkata&start={START}&end={END}")
    assert page.body.get("data-state") == "error" and "STATS_TIMEZONE" in page.status, (page.body, page.status)


@pytest.mark.integration
def test_up_prints_a_link_that_opens_a_drawn_page(tmp_path):
    """A new user's first run: `usage-stats up --demo`, then the link it prints, in a
    browser. Beat's ticks are an hour apart here: what is drawn was rolled up by `up`
    itself before it started the services (and the real-time tail)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs Debian's chromium)")
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
    try:
        deadline = time.monotonic() + 90
        link = None
        while link is None and proc.poll() is None and time.monotonic() < deadline:
            link = next((x.split(":", 1)[1].strip() for x in list(lines) if x.startswith("chart page:")), None)
            time.sleep(0.2)
        assert link is not None and link.startswith(f"http://127.0.0.1:{port}/#token="), "".join(lines)
        page = dom(tmp_path, link)
        assert page.body.get("data-state") == "drawn", (page.body, page.status, "".join(lines))
        assert int(page.body["data-rows"]) > 0 and int(page.body["data-bar-pixels"]) > 5000, page.body
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    assert proc.returncode == 0, "".join(lines)
