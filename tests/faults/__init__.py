"""Fault-injection helpers for the reliability tests (tests/test_reliability_*.py and
friends); holds no tests itself.

- servers: throwaway PostgreSQL (initdb in a temporary folder, a free port) and
  redis-server instances that a test may stop, kill and restart; the API under gunicorn
  and Celery workers/beat as subprocesses, always killed in `finally`.
- killer: a Celery app module (`celery -A tests.faults.killer worker`) that SIGKILLs its
  own process at a chosen event of a tick (before or after any statement, at a commit).
- workload: the gateway writers, tickers and re-aggregators of the concurrency test.
"""
