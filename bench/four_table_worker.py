"""The product's Celery worker writing only the four original summary tables (bench only):

    celery -A bench.four_table_worker worker ...

bench/run.py starts it beside the product's worker, so that a re-aggregation into four
tables is measured the same way as into all five (bench/variants.py).
"""

from bench import variants

variants.use("four")

from worker import celery  # noqa: E402  (after the swap, so its tasks see four tables)

__all__ = ["celery"]
