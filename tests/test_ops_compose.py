"""docker-compose.yml: validated by Compose itself (`docker-compose config`, which needs
no engine; .ci/run installs Debian's docker-compose), and checked structurally:
services, dependency conditions, healthchecks, exactly one beat, the settings every app
container shares, and that every variable it sets is one Settings reads. The Dockerfile
gets every file the package build needs past .dockerignore, and pyproject.toml names no
file that does not exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "api", "worker", "beat")


@pytest.fixture(scope="module")
def compose():
    # PyYAML resolves the anchors and `<<` merge keys as Compose does.
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.integration
def test_compose_validates_the_file():
    compose_cli = shutil.which("docker-compose")
    if compose_cli is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    done = subprocess.run(
        [compose_cli, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_services(compose):
    assert set(compose["services"]) == {"postgres", "redis", "migrate", "api", "worker", "beat"}
    assert "pgdata" in compose["volumes"]


def test_dependencies_wait_for_health_and_migration(compose):
    s = compose["services"]
    assert s["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker", "beat"):
        assert s[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
    assert s["migrate"]["command"] == ["usage-stats", "db", "upgrade"]
    assert s["migrate"]["restart"] == "no"


def test_healthchecks(compose):
    s = compose["services"]
    assert "pg_isready" in " ".join(s["postgres"]["healthcheck"]["test"])
    assert s["redis"]["healthcheck"]["test"][-1] == "ping"
    assert "/readyz" in " ".join(s["api"]["healthcheck"]["test"])
    assert "9100/metrics" in " ".join(s["worker"]["healthcheck"]["test"])


def test_exactly_one_beat(compose):
    beats = [
        name
        for name, svc in compose["services"].items()
        if "beat" in svc.get("command", []) or "--beat" in svc.get("command", [])
    ]
    assert beats == ["beat"]
    assert compose["services"]["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert "--beat" not in compose["services"]["worker"]["command"]


def test_app_settings(compose):
    s = compose["services"]
    for name in APP_SERVICES:
        env = s[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert env["LOG_FORMAT"] in ("plain", "json")
    for name in ("api", "worker", "beat"):
        assert s[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"] == "/run/prometheus"
        assert any(t.startswith("/run/prometheus") for t in s[name]["tmpfs"])
    assert s["worker"]["environment"]["WORKER_METRICS_PORT"] == "9100"
    api_cmd = s["api"]["command"]
    assert api_cmd[:3] == ["gunicorn", "-c", "python:api.gunicorn_conf"] and api_cmd[-1] == "api:create_app()"


def test_every_variable_is_a_setting(compose):
    """A typo in a variable name would be silently ignored by the containers."""
    from shared.config import Settings

    source = (ROOT / "shared" / "config.py").read_text()
    known = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', source)) | {"PROMETHEUS_MULTIPROC_DIR"}
    for name in APP_SERVICES:
        for var in compose["services"][name]["environment"]:
            assert var in known, (name, var)
    Settings.from_env({k: str(v) for k, v in compose["services"]["worker"]["environment"].items()})


def test_dockerfile_serves_the_api_with_the_gunicorn_config():
    text = (ROOT / "Dockerfile").read_text()
    assert "python:api.gunicorn_conf" in text and "--uid 1000" in text


def _dockerignore_patterns() -> list[re.Pattern[str]]:
    """.dockerignore's patterns as regular expressions (Docker's syntax: `*` within one
    path segment, `**/` any number of directories; no `!` exceptions are used)."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), line
        parts = re.split(r"(\*\*/|\*|\?|\[[^\]]*\])", line.strip("/"))
        regex = "".join(
            "(?:.*/)?"
            if p == "**/"
            else "[^/]*"
            if p == "*"
            else "[^/]"
            if p == "?"
            else p
            if p.startswith("[")
            else re.escape(p)
            for p in parts
        )
        patterns.append(re.compile(regex))
    return patterns


def _ignored(path: str, patterns: list[re.Pattern[str]]) -> bool:
    """A path is left out when it or one of its parent directories matches."""
    segments = path.split("/")
    prefixes = ["/".join(segments[: i + 1]) for i in range(len(segments))]
    return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)


def _project_files() -> list[str]:
    """The files of the project: tracked, or new and not ignored by .gitignore."""
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_dockerignore_keeps_what_the_image_is_built_from():
    patterns = _dockerignore_patterns()
    assert _ignored(".venv/bin/python", patterns) and _ignored("shared/__pycache__/db.cpython-311.pyc", patterns)
    assert _ignored("usage-stats.db", patterns) and _ignored("celerybeat-schedule.db", patterns)
    assert _ignored(".git/HEAD", patterns) and _ignored("bench/results/run-1/figure.json", patterns)

    copied = [
        src
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
    ]
    assert {"pyproject.toml", "README.md", "LICENSE", "shared", "worker", "api"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not _ignored(src, patterns), src
    files = _project_files()
    for src in copied:
        inside = [f for f in files if f == src or f.startswith(src + "/")]
        assert inside, src
        assert not [f for f in inside if _ignored(f, patterns)], src


def test_pyproject_names_only_files_that_exist():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (ROOT / project["project"]["readme"]).is_file()
    assert project["project"]["license"] == "MIT"
    for name in project["project"]["license-files"]:
        assert list(ROOT.glob(name)), name
    assert "Permission is hereby granted" in (ROOT / "LICENSE").read_text()
    for package, globs in project["tool"]["setuptools"]["package-data"].items():
        for pattern in globs:
            assert list((ROOT / package).glob(pattern)), f"{package}/{pattern}"
