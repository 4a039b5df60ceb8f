"""All configuration, read from the environment in one place.

Every setting has a default that works on a fresh machine with nothing running:
a SQLite file for the data, a SQLite file as the Celery broker. Production points
DATABASE_URL at PostgreSQL and CELERY_BROKER_URL at Redis.

The databases can also be named as new-api names them, so that the gateway's own
environment file serves as is (formats: shared.dsn):

- the main database (`users`, `tokens`, `channels`, and `logs` unless they are apart):
  DATABASE_URL, a SQLAlchemy URL, when set; else new-api's SQL_DSN, converted; else,
  when SQLITE_PATH is set, new-api's SQLite file there (what new-api opens with SQL_DSN
  empty); else sqlite:///usage-stats.db. When DATABASE_URL and SQL_DSN are both set,
  DATABASE_URL wins, even where the two name different databases.
- the database holding `logs` (log_database_url): LOG_DATABASE_URL when set; else
  new-api's LOG_SQL_DSN, converted; else None, meaning the main database. A log
  database equal to the main one is None as well.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Legacy zone names PostgreSQL's AT TIME ZONE reads as abbreviations or POSIX rules
# (fixed offsets, or inverted signs) while zoneinfo reads them as real zones: days would
# start at different instants on the two databases.
AMBIGUOUS_ZONE_NAMES = frozenset(
    {
        "CET",
        "EET",
        "MET",
        "WET",
        "EST",
        "MST",
        "HST",
        "EST5EDT",
        "CST6CDT",
        "MST7MDT",
        "PST8PDT",
    }
)


class ConfigError(ValueError):
    """A setting in the environment has a value we cannot use."""


def _check_timezone(tz: str) -> None:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"STATS_TIMEZONE must be an IANA time zone name such as UTC or Asia/Shanghai, got {tz!r}"
        ) from None
    if tz.upper() in AMBIGUOUS_ZONE_NAMES:
        raise ConfigError(
            f"STATS_TIMEZONE {tz!r} is read by PostgreSQL as a fixed-offset abbreviation but by the "
            f"zone database as a zone with daylight saving; use a Region/City name such as Europe/Paris"
        )


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///usage-stats.db"
    # The database holding new-api's `logs` when it is not the main one (new-api's
    # LOG_SQL_DSN); None: `logs` is in the main database.
    log_database_url: str | None = None
    celery_broker_url: str = "sqla+sqlite:///usage-stats-broker.db"
    celery_result_backend: str = "db+sqlite:///usage-stats-results.db"
    rollup_interval_seconds: int = 60
    stats_timezone: str = "UTC"
    # How many log ids one rollup transaction covers at most, so that catching up
    # on a long history never holds one huge transaction.
    rollup_batch_size: int = 50_000
    # Re-aggregation works through its range this many days per transaction.
    reaggregate_chunk_days: int = 1
    # A re-aggregation handed to the workers asks this many of them (itself included) to
    # share its chunks (shared.chunks); 1: it runs them alone.
    reaggregate_workers: int = 2
    # Longest [start, end] one API request may ask for, in days, per granularity: they
    # bound the rows one answer can hold (31 days = 745 hourly buckets per model).
    api_max_span_hourly_days: int = 31
    api_max_span_daily_days: int = 366
    # plain (default) or json: one JSON object per log line (shared.logging_setup).
    log_format: str = "plain"
    # The worker serves Prometheus metrics on this port when set (0: not served).
    worker_metrics_port: int = 0
    # Retention (shared.retention), off when 0: drop hourly rows older than this many
    # days (daily rows keep all history) ...
    retain_hourly_days: int = 0
    # ... and delete raw logs older than this many days, only those already rolled up.
    retain_logs_days: int = 0
    # API answers add the consume logs the rollup has not counted yet (shared.queries);
    # false: summary rows only, and a request's realtime=true is refused.
    api_realtime: bool = True
    # GET /api/rankings: public (no login), auth (any enabled user's access token) or off (403).
    rankings: str = "public"
    # The operator's model -> vendor entries over shared.vendors' default table, as
    # (model name or prefix, vendor) pairs: the JSON file at RANKINGS_VENDORS, read once.
    rankings_vendors: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Here rather than in from_env, so that a Settings built in code is checked too.
        _check_timezone(self.stats_timezone)
        _check_rankings(self.rankings)

    @property
    def stats_database_url(self) -> str:
        """The database of `logs`, where the rollup's own tables live beside them: the
        log database when new-api keeps one apart, else the main one."""
        return self.log_database_url or self.database_url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        broker = environ.get("CELERY_BROKER_URL") or cls.celery_broker_url
        # A Redis broker keeps task results beside it; the embedded broker keeps
        # them in a SQLite file, so that `up` needs no server at all.
        default_backend = broker if broker.startswith(("redis://", "rediss://")) else cls.celery_result_backend
        tz = environ.get("STATS_TIMEZONE") or cls.stats_timezone
        database_url, log_database_url = _database_urls(environ, cls.database_url)
        return cls(
            database_url=database_url,
            log_database_url=log_database_url,
            celery_broker_url=broker,
            celery_result_backend=environ.get("CELERY_RESULT_BACKEND") or default_backend,
            rollup_interval_seconds=_int(environ, "ROLLUP_INTERVAL_SECONDS", cls.rollup_interval_seconds),
            stats_timezone=tz,
            rollup_batch_size=_int(environ, "ROLLUP_BATCH_SIZE", cls.rollup_batch_size),
            reaggregate_chunk_days=_int(environ, "REAGGREGATE_CHUNK_DAYS", cls.reaggregate_chunk_days),
            reaggregate_workers=_int(environ, "REAGGREGATE_WORKERS", cls.reaggregate_workers),
            api_max_span_hourly_days=_int(environ, "API_MAX_SPAN_HOURLY_DAYS", cls.api_max_span_hourly_days),
            api_max_span_daily_days=_int(environ, "API_MAX_SPAN_DAILY_DAYS", cls.api_max_span_daily_days),
            log_format=_log_format(environ),
            worker_metrics_port=_int(environ, "WORKER_METRICS_PORT", cls.worker_metrics_port, minimum=0),
            retain_hourly_days=_int(environ, "RETAIN_HOURLY_DAYS", cls.retain_hourly_days, minimum=0),
            retain_logs_days=_int(environ, "RETAIN_LOGS_DAYS", cls.retain_logs_days, minimum=0),
            api_realtime=_bool(environ, "API_REALTIME", cls.api_realtime),
            rankings=(environ.get("RANKINGS") or cls.rankings).strip().lower(),
            rankings_vendors=_rankings_vendors(environ.get("RANKINGS_VENDORS", "").strip()),
        )


def _database_urls(environ: Mapping[str, str], default: str) -> tuple[str, str | None]:
    """The main database's URL and the log database's (None: the main one), by the
    precedence in the module docstring."""
    # Imported here: shared.dsn raises this module's ConfigError.
    from .dsn import DEFAULT_SQLITE_PATH, sqlalchemy_url

    sqlite_path = environ.get("SQLITE_PATH") or DEFAULT_SQLITE_PATH
    main = environ.get("DATABASE_URL")
    if not main:
        if environ.get("SQL_DSN"):
            main = sqlalchemy_url(environ["SQL_DSN"], sqlite_path=sqlite_path, name="SQL_DSN")
        elif environ.get("SQLITE_PATH"):
            main = sqlalchemy_url("local", sqlite_path=sqlite_path, name="SQL_DSN")
        else:
            main = default
    log = environ.get("LOG_DATABASE_URL")
    if not log and environ.get("LOG_SQL_DSN"):
        log = sqlalchemy_url(environ["LOG_SQL_DSN"], sqlite_path=sqlite_path, name="LOG_SQL_DSN")
    return main, (log if log and log != main else None)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return value in _TRUE


def _log_format(environ: Mapping[str, str]) -> str:
    raw = (environ.get("LOG_FORMAT") or Settings.log_format).strip().lower()
    if raw not in ("plain", "json"):
        raise ConfigError(f"LOG_FORMAT must be plain or json, got {raw!r}")
    return raw


RANKINGS_MODES = ("public", "auth", "off")


def _check_rankings(mode: str) -> None:
    if mode not in RANKINGS_MODES:
        raise ConfigError(f"RANKINGS must be public, auth or off, got {mode!r}")


def _rankings_vendors(path: str) -> tuple[tuple[str, str], ...]:
    """The pairs of the JSON object in the file at `path` ('' = none): every key a model
    name or prefix, every value a vendor name, both non-empty strings."""
    if not path:
        return ()
    example = '{"gpt-": "OpenAI", "my-model": "My Vendor"}'
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"RANKINGS_VENDORS: cannot read {path!r}: {reason}") from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"RANKINGS_VENDORS: {path!r} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(table, dict):
        raise ConfigError(
            f"RANKINGS_VENDORS: {path!r} must hold one JSON object of model name or prefix -> vendor, e.g. {example}"
        )
    for key, vendor in table.items():
        if not key.strip():
            raise ConfigError(f"RANKINGS_VENDORS: {path!r} has an empty model name or prefix")
        if not isinstance(vendor, str) or not vendor.strip():
            raise ConfigError(
                f"RANKINGS_VENDORS: {path!r} maps {key!r} to {vendor!r}; a vendor must be a non-empty string"
            )
    return tuple((key, vendor) for key, vendor in table.items())
