"""The benchmark's raw comparator (bench/raw_api.py) answers exactly as the API does.

Its speed ratio means something only if both compute the same thing: the raw routes sum
every consume log of the range, the API sums the summary rows; both must equal the
independent Python oracle over the committed logs.
"""

from __future__ import annotations

import pytest

from bench.raw_api import create_app as create_raw_app
from shared.config import Settings
from shared.rollup import rollup
from tests.api_support import Api, add_user, committed_logs, expected, ok_data
from tests.logdata import HOUR, insert, log, utc

T0 = utc(2024, 3, 9)


@pytest.mark.parametrize("granularity", ["hour", "day", "week", "month"])
def test_raw_routes_equal_the_api_and_the_oracle(engine, granularity):
    admin = add_user(engine, 1, "root", role=100)
    alice = add_user(engine, 2, "alice")
    rows = [
        log(user_id=uid, created_at=T0 + i * 7 * HOUR + uid, model=f"m{i % 3}") for i in range(40) for uid in (1, 2)
    ]
    rows += [log(user_id=2, created_at=T0 + 5 * HOUR, kind=3), log(user_id=2, created_at=T0 + 6 * HOUR, model=None)]
    insert(engine, rows)
    settings = Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone="UTC")
    rollup(engine, settings, wait=True)
    api = Api(create_raw_app(settings, engine=engine))
    days = 14 if granularity == "hour" else 60
    window = {"granularity": granularity, "start_timestamp": T0 - days * 86400, "end_timestamp": T0 + 14 * 86400}
    logs = committed_logs(engine)
    lo, hi = window["start_timestamp"], window["end_timestamp"]

    raw_self = ok_data(api.get("/raw/data/self", alice, 2, **window))
    assert raw_self == ok_data(api.get("/api/data/self", alice, 2, **window))
    assert raw_self == expected(logs, granularity, "UTC", lo, hi, user_id=2) and raw_self

    raw_all = ok_data(api.get("/raw/data/", admin, 1, **window))
    assert raw_all == ok_data(api.get("/api/data/", admin, 1, **window))
    assert raw_all == expected(logs, granularity, "UTC", lo, hi, site_wide=True) and raw_all
