"""gunicorn settings for the API: `gunicorn -c python:api.gunicorn_conf 'api:create_app()'`.

- Threads: each worker process serves `threads` requests at once (gunicorn's gthread
  worker), so a request waiting on the database does not hold its process, and
  connections are kept alive between a dashboard's polls (the sync worker closes every
  one: a TCP handshake per poll). Answers are computed in Python under the GIL, so
  processes (`--workers`) still set how many cores the API uses. The command line's
  `--threads` overrides this.
- Prometheus' multiprocess mode (shared.metrics): with PROMETHEUS_MULTIPROC_DIR set, the
  directory is emptied when gunicorn starts (values of a previous run must not be
  served) and a worker's live gauges are dropped when it exits.

Everything else comes from the command line.
"""

from __future__ import annotations

import os
import shutil

threads = 4
# Seconds an idle kept-alive connection stays open (gunicorn's default is 2): longer than
# the gap between requests of a busy page, shorter than a dashboard's poll interval.
keepalive = 5


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def on_starting(server):
    path = _multiproc_dir()
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if os.path.isdir(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.unlink(full)


def child_exit(server, worker):
    if _multiproc_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
