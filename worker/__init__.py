"""Celery entry module: `celery -A worker worker` and `celery -A worker beat`.

Builds the app from the environment (shared.config) and registers the tasks under the
names of the job protocol (shared.jobs), by which beat, the API and the CLI send them.
"""

from shared.config import Settings

from .app import make_celery

celery = make_celery(Settings.from_env())

from . import tasks  # noqa: E402,F401  (registers the tasks on `celery`)
