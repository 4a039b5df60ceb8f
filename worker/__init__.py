"""Celery entry module: `celery -A worker worker` and `celery -A worker beat`.

Builds the app from the environment (shared.config) and registers the tasks.
"""
from .app import make_celery
from shared.config import Settings

celery = make_celery(Settings.from_env())

from . import tasks  # noqa: E402,F401  (registers the tasks on `celery`)
