"""The read API: new-api's data statistics endpoints over the rollup tables.

    gunicorn 'api:create_app()'

Modules: routes (the data endpoints and the chart page), flow (/api/data/users and the
flow views), logstat (/api/log/stat and /api/log/self/stat), rankings (/api/rankings), ops
(re-aggregation over HTTP, /metrics, request metrics and access log lines), auth (headers
-> user), params (query string), csvexport (CSV answers), errors (the JSON failure shape),
openapi (the document), config (the span limits, from Settings). The SQL lives in
shared.queries (and shared.rankings), the token lookup in shared.auth.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Flask
from sqlalchemy.engine import Connection, Engine

from shared.config import Settings
from shared.db import get_engine

from .answer_cache import AnswerCache
from .config import ApiLimits
from .jsonprovider import OrjsonProvider

__all__ = ["AppState", "create_app"]


@dataclass(frozen=True)
class AppState:
    settings: Settings
    # The database of `logs` and the summary tables (Settings.stats_database_url).
    engine: Engine
    limits: ApiLimits
    # The gateway's main database, of `users`, `tokens` and `channels`: `engine` itself
    # unless new-api keeps its logs apart (LOG_SQL_DSN).
    gateway: Engine
    # The summary halves of answers (api.answer_cache); None: every answer is read whole.
    answers: AnswerCache | None = None

    @contextmanager
    def connections(self, *, deferred: bool = False) -> Iterator[tuple[Connection, Connection]]:
        """(stats, gateway): a queries.snapshot connection to `engine`, for the answer,
        and one to `gateway`, for who is asking and the names of keys and channels;
        one and the same connection when they are one database. Nothing is joined
        across the two: a user name is resolved to its id first. `deferred`: the
        snapshot begins only when etag.revalidate finds the client's copy out of date
        (queries.snapshot)."""
        from shared.queries import snapshot

        with snapshot(self.engine, deferred=deferred) as conn:
            if self.gateway is self.engine:
                yield conn, conn
            else:
                with self.gateway.connect() as gateway:
                    yield conn, gateway


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    limits: ApiLimits | None = None,
    gateway: Engine | None = None,
    answer_cache: bool = True,
) -> Flask:
    """The Flask app. `settings` default to the environment; `engine` (for tests with an
    in-memory database) defaults to the process's engine for
    settings.stats_database_url, `gateway` to the one for settings.database_url (to
    `engine` when the logs are not apart). `answer_cache`: keep the summary halves of
    answers (api.answer_cache); off, every answer is read whole. No connection is opened here, so gunicorn
    --preload forks an empty pool."""
    from shared.logging_setup import configure

    from . import errors, flow, logstat, ops, rankings, routes

    settings = settings if settings is not None else Settings.from_env()
    # No Flask static route: the chart page's few files are served by routes.page_file.
    app = Flask(__name__, static_folder=None)
    app.json = OrjsonProvider(app)  # rows keep the contract's field order
    # Werkzeug redirects "//api/data" to "/api/data" with an HTML body; a 404 in JSON is better.
    app.url_map.merge_slashes = False
    engine = engine if engine is not None else get_engine(settings.stats_database_url)
    if gateway is None:
        gateway = get_engine(settings.database_url) if settings.log_database_url else engine
    app.extensions["usage_stats"] = AppState(
        settings=settings,
        engine=engine,
        limits=limits if limits is not None else ApiLimits.from_settings(settings),
        gateway=gateway,
        answers=AnswerCache() if answer_cache else None,
    )
    errors.register(app)
    # LOG_FORMAT=json, or nobody set up logging yet (gunicorn): our handler on the root
    # logger, in the configured format. Otherwise (the CLI, pytest) theirs stays.
    import logging

    if settings.log_format == "json" or not logging.getLogger().handlers:
        configure(settings.log_format)
    errors.ensure_log_output()
    app.register_blueprint(routes.bp)
    app.register_blueprint(rankings.bp)
    app.register_blueprint(flow.bp)
    app.register_blueprint(logstat.bp)
    ops.register(app)
    return app
