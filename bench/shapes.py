"""The benchmark's two data shapes: who sends which model's requests.

Both shapes take their instants and token counts from the same trace tiling
(bench/data.py), the same 1,000 users and 40 models, the same keys, channels and groups,
and the same 3 % of logs that are not consume logs. They differ in how requests spread
over (user, model) pairs, which decides how many logs share a summary row:

- dense: users follow a power law (user 1 sends about 6 % of all requests) and each keeps
  to three neighbouring models of the 40, mostly the first: 3,000 (user, model) pairs. The
  heavy users' buckets hold many logs: over the whole history 1.7 logs per non-empty
  (user, model, hour) bucket at 1M logs (p99 9, max 101), more at 10M; a tick of 10,000
  logs within one hour folds into about 2,200 hourly rows (4.4 logs a row).
- sparse: every user and every model equally likely, independently: 1,000 x 40 pairs
  spread evenly over the 30 days. At 2M logs that is 2M / (40,000 pairs x 720 hours) =
  0.07 logs per (user, model, hour) bucket, so nearly every log lands alone in its bucket
  (the median non-empty bucket holds 1 log up to about 28M logs, one per bucket on
  average; 1.04 on average at 2M): a history has about one summary row per log, and a
  tick of 10,000 logs within one hour folds into about 8,600 hourly rows (1.1 logs a row).

`describe` measures that on a built data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class Shape:
    """SQL expressions for one log's user and model, from uniform numbers in [0, 1)
    that data.py draws per log (x.pu for the user, x.pick for the model) and :users,
    :models (the counts). `model` is a 0-based index into data.model_names() and may
    use u.user_id (the user just drawn)."""

    name: str
    user: str
    model: str


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape(
            "dense",
            user="1 + CAST(floor(:users * power(x.pu, 2.5)) AS INT)",
            model="(u.user_id * 7 + CASE WHEN x.pick < 0.7 THEN 0 WHEN x.pick < 0.9 THEN 1 ELSE 2 END) % :models",
        ),
        Shape(
            "sparse",
            user="1 + CAST(floor(:users * x.pu) AS INT)",
            model="CAST(floor(:models * x.pick) AS INT)",
        ),
    )
}
DEFAULT_SHAPE = "dense"


def shape(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown data shape {name!r}: one of {', '.join(SHAPES)}") from None


# Logs per non-empty bucket, for two keys: the (user, model, hour) rows of today's
# hourly_usage, and the finer rows keyed also by key, channel and group (what a summary
# at issue 12's full detail would hold). Consume logs only, as the rollup counts them.
_BUCKETS = """
SELECT count(*) AS buckets,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY n) AS median,
       percentile_disc(0.9) WITHIN GROUP (ORDER BY n) AS p90,
       percentile_disc(0.99) WITHIN GROUP (ORDER BY n) AS p99,
       max(n) AS max,
       round(avg(n), 2) AS mean,
       round(avg(CASE WHEN n = 1 THEN 1.0 ELSE 0 END), 3) AS share_single
FROM (SELECT count(*) AS n FROM logs WHERE type = 2 GROUP BY {key}) b
"""

_DISTINCT = """
SELECT count(*) AS logs,
       count(*) FILTER (WHERE type = 2) AS consume_logs,
       count(DISTINCT user_id) AS users,
       count(DISTINCT model_name) AS models,
       count(DISTINCT (user_id, model_name)) AS user_model_pairs,
       count(DISTINCT token_id) AS tokens,
       count(DISTINCT token_name) AS token_names,
       count(DISTINCT (token_id, token_name)) AS token_id_name_pairs,
       count(DISTINCT channel_id) AS channels,
       count(DISTINCT "group") AS groups,
       count(DISTINCT created_at - created_at % 3600) AS hours
FROM logs
"""

_HOURLY_VOLUME = """
SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY n) AS median,
       min(n) AS min,
       max(n) AS max
FROM (SELECT count(*) AS n FROM logs WHERE type = 2 GROUP BY created_at - created_at % 3600) h
"""


def describe(conn: Connection) -> dict[str, Any]:
    """Distribution facts of the logs in this database (PostgreSQL): logs per non-empty
    bucket, distinct keys, channels and groups, consume logs per hour. Scans logs a few
    times: seconds at 10M."""

    def one(sql: str) -> dict[str, Any]:
        row = conn.execute(sa.text(sql)).mappings().one()
        return {k: float(v) if isinstance(v, Decimal) else v for k, v in row.items()}

    hour = "created_at - created_at % 3600"
    return {
        "distinct": one(_DISTINCT),
        "logs_per_bucket": {
            "user_model_hour": one(_BUCKETS.format(key=f"{hour}, user_id, model_name")),
            "user_model_token_channel_group_hour": one(
                _BUCKETS.format(key=f'{hour}, user_id, model_name, token_id, channel_id, "group"')
            ),
        },
        "consume_logs_per_hour": one(_HOURLY_VOLUME),
    }
