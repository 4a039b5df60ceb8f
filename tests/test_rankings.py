"""GET /api/rankings: site-wide model and vendor rankings by tokens over rolling windows.

The truth is computed here in Python from the raw committed logs (tests/api_support.
committed_logs), independently of shared.queries, shared.rollup and shared.rankings: a
window holds the consume logs with a model name whose hour (created_at - created_at %
3600) starts in [start, end]; buckets are hour - hour % size; vendors come from the
table VENDOR written out by hand below; fractions are rounded with decimal.
Tests taking `engine` run on SQLite and, marked integration, on PostgreSQL.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest

import api.rankings as rankings_api
from api import create_app
from shared import models as m
from shared.config import ConfigError, Settings
from shared.db import make_engine
from shared.rollup import tick
from shared.vendors import UNKNOWN_VENDOR, VendorTable
from tests.api_support import Api, add_user, assert_failure, committed_logs
from tests.logdata import insert, log, utc

HOUR, DAY = 3600, 86400
NOW = utc(2025, 3, 10, 10, 30, 15)  # a Monday, mid-hour
PERIODS = {"today": (DAY, HOUR), "week": (7 * DAY, DAY), "month": (30 * DAY, DAY), "year": (365 * DAY, 7 * DAY)}

# The models of the test data and the vendor each must get from the default table.
VENDOR = {
    "gpt-4o": "OpenAI",
    "gpt-4o-mini": "OpenAI",
    "o3-mini": "OpenAI",
    "openai/gpt-4.1": "OpenAI",
    "claude-3-5-sonnet-20241022": "Anthropic",
    "Claude-Opus-4": "Anthropic",
    "gemini-2.5-pro": "Google",
    "deepseek-chat": "DeepSeek",
    "deepseek-ai/DeepSeek-V3": "DeepSeek",
    "qwen-max": "Alibaba",
    "Qwen/Qwen2.5-72B-Instruct": "Alibaba",
    "glm-4-plus": "Zhipu AI",
    "moonshot-v1-8k": "Moonshot AI",
    "kimi-k2": "Moonshot AI",
    "doubao-pro-32k": "ByteDance",
    "ernie-4.0": "Baidu",
    "hunyuan-lite": "Tencent",
    "abab6.5s-chat": "MiniMax",
    "yi-large": "01.AI",
    "mistral-large-latest": "Mistral AI",
    "llama-3.3-70b": "Meta",
    "grok-3": "xAI",
    "command-r-plus": "Cohere",
    "my-finetune": UNKNOWN_VENDOR,
    "local/whatever": UNKNOWN_VENDOR,
    "zz-model": UNKNOWN_VENDOR,
}
MODELS = list(VENDOR)


# --- the truth ---------------------------------------------------------------------------


def totals(logs, lo, hi, size=None) -> dict:
    """Tokens by model (or by (model, bucket) with `size`) of the consume logs with a
    model name whose hour starts in [lo, hi]; only positive totals."""
    out: dict = defaultdict(int)
    for lg in logs:
        if lg["type"] != m.LOG_CONSUME or lg["created_at"] is None or not lg["model_name"]:
            continue
        hour = lg["created_at"] - lg["created_at"] % HOUR
        if lo <= hour <= hi:
            key = lg["model_name"] if size is None else (lg["model_name"], hour - hour % size)
            out[key] += (lg["prompt_tokens"] or 0) + (lg["completion_tokens"] or 0)
    return {k: v for k, v in out.items() if v > 0}


def r4(num: int, den: int) -> float:
    return float((Decimal(num) / Decimal(den)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def growth(cur: int, prev: int) -> float:
    return 100.0 if prev == 0 else r4((cur - prev) * 100, prev)


def by_size(d: dict) -> list:
    return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))


def ts(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


def label(t: int, size: int, tz: str) -> str:
    if size == HOUR:
        return datetime.fromtimestamp(t, tz=ZoneInfo(tz)).strftime("%H:%M")
    d = datetime.fromtimestamp(t, tz=UTC)
    return f"{d:%b} {d.day}"


def truth(logs, period: str, now: int = NOW, tz: str = "UTC", vendor=VENDOR) -> dict:
    duration, size = PERIODS[period]
    start = now - duration
    cur = totals(logs, start, now)
    prev = totals(logs, start - duration, start - 1)
    buckets = totals(logs, start, now, size)
    ranks = {name: i for i, (name, _) in enumerate(by_size(cur), 1)}
    prev_ranks = {name: i for i, (name, _) in enumerate(by_size(prev), 1)}
    whole = sum(cur.values())

    models = []
    for name, total in by_size(cur)[:20]:
        row = {"rank": ranks[name]}
        if name in prev_ranks:
            row["previous_rank"] = prev_ranks[name]
        row.update(
            model_name=name,
            vendor=vendor[name],
            category="all",
            total_tokens=total,
            share=r4(total, whole),
            growth_pct=growth(total, prev.get(name, 0)),
        )
        models.append(row)

    v_cur, v_prev = defaultdict(int), defaultdict(int)
    for name, total in cur.items():
        v_cur[vendor[name]] += total
    for name, total in prev.items():
        v_prev[vendor[name]] += total
    vendors = []
    for i, (v, total) in enumerate(by_size(v_cur), 1):
        own = [name for name, _ in by_size(cur) if vendor[name] == v]
        vendors.append(
            {
                "rank": i,
                "vendor": v,
                "total_tokens": total,
                "share": r4(total, whole),
                "growth_pct": growth(total, v_prev[v]),
                "models_count": len(own),
                "top_model": own[0],
            }
        )

    moves = [(prev_ranks[n] - ranks[n], ranks[n], n) for n in cur if n in prev_ranks]

    def mover(delta, rank, name):
        return {
            "model_name": name,
            "vendor": vendor[name],
            "rank_delta": delta,
            "current_rank": rank,
            "growth_pct": growth(cur[name], prev[name]),
        }

    movers = [mover(*x) for x in sorted(x for x in moves if x[0] > 0)]
    movers.sort(key=lambda x: (-x["rank_delta"], x["current_rank"]))
    droppers = [mover(*x) for x in moves if x[0] < 0]
    droppers.sort(key=lambda x: (x["rank_delta"], x["current_rank"]))

    first_hour = start + (-start) % HOUR
    all_buckets = sorted({h - h % size for h in range(first_hour, now + 1, HOUR)})
    bucket_list = [{"ts": ts(b), "label": label(b, size, tz)} for b in all_buckets]

    top10 = [name for name, _ in by_size(cur)[:10]]
    series = [{"name": n, "vendor": vendor[n], "total": cur[n]} for n in top10]
    if len(cur) > 10:
        series.append({"name": "Others", "vendor": "Various", "total": whole - sum(cur[n] for n in top10)})
    per = defaultdict(int)
    for (name, b), t in buckets.items():
        per[b, name if name in top10 else "Others"] += t
    model_points = [
        {
            "ts": ts(b),
            "label": label(b, size, tz),
            "model": s["name"],
            "vendor": s["vendor"],
            "tokens": per[b, s["name"]],
        }
        for b in all_buckets
        for s in series
        if per.get((b, s["name"]), 0) > 0
    ]

    top5 = [v for v, _ in by_size(v_cur)[:5]]
    v_series = [{"name": v, "total": v_cur[v], "share": r4(v_cur[v], whole)} for v in top5]
    if len(v_cur) > 5:
        rest = whole - sum(v_cur[v] for v in top5)
        v_series.append({"name": "Others", "total": rest, "share": r4(rest, whole)})
    v_per, b_total = defaultdict(int), defaultdict(int)
    for (name, b), t in buckets.items():
        v_per[b, vendor[name] if vendor[name] in top5 else "Others"] += t
        b_total[b] += t
    vendor_points = [
        {
            "ts": ts(b),
            "label": label(b, size, tz),
            "vendor": s["name"],
            "share": r4(v_per[b, s["name"]], b_total[b]),
            "tokens": v_per[b, s["name"]],
        }
        for b in all_buckets
        for s in v_series
        if v_per.get((b, s["name"]), 0) > 0
    ]
    return {
        "models": models,
        "vendors": vendors,
        "top_movers": movers[:6],
        "top_droppers": droppers[:6],
        "models_history": {"points": model_points, "models": series, "buckets": bucket_list},
        "vendor_share_history": {"points": vendor_points, "vendors": v_series, "buckets": bucket_list},
    }


# --- data and the API ----------------------------------------------------------------------


def workload(seed: int, n: int = 1800) -> list[dict]:
    """Logs over the two years before NOW (every period and the one before it), denser
    towards NOW; model popularity changes from day to day so that ranks move. Plus
    other log types, logs without a model or without tokens, and logs on the edges."""
    rnd = random.Random(seed)
    day_weights: dict[int, list[float]] = {}
    rows = []
    for i in range(n):
        span = (2 * DAY, 60 * DAY, 731 * DAY)[i % 3]
        created = NOW - rnd.randrange(0, span)
        day = (NOW - created) // DAY
        weights = day_weights.setdefault(day, [rnd.random() ** 2 + 0.05 for _ in MODELS])
        model = rnd.choices(MODELS, weights)[0]
        kind = m.LOG_CONSUME if rnd.random() < 0.9 else rnd.choice((m.LOG_TOPUP, m.LOG_ERROR, m.LOG_REFUND))
        prompt, completion = rnd.randrange(0, 5000), rnd.randrange(0, 2000)
        rows.append(
            log(
                user_id=rnd.randrange(1, 4),
                created_at=created,
                model=model,
                kind=kind,
                prompt=prompt,
                completion=completion,
            )
        )
    for duration, _ in PERIODS.values():
        start = NOW - duration
        for t in (
            start - 1,
            start,
            start + (-start) % HOUR - 1,
            start + (-start) % HOUR,
            start - duration,
            start - duration - 1,
        ):
            rows.append(log(created_at=t, model="zz-model", prompt=7, completion=1))
    rows += [
        log(created_at=NOW, model="gpt-4o", prompt=11, completion=0),
        log(created_at=NOW + 1, model="gpt-4o", prompt=13, completion=0),  # same hour as NOW: counted
        log(created_at=NOW + HOUR, model="gpt-4o", prompt=17, completion=0),  # an hour not begun
        log(created_at=NOW - 5, model="", prompt=5000, completion=5000),
        log(created_at=NOW - 5, model="gpt-4o-mini", prompt=0, completion=0),
        log(created_at=NOW - 5, model="never-any-tokens", prompt=0, completion=0),
    ]
    rnd.shuffle(rows)
    return rows


def make(engine, **settings) -> Api:
    s = Settings(database_url=engine.url.render_as_string(hide_password=False), **settings)
    app = create_app(s, engine=engine)
    if "rankings" not in app.blueprints:
        app.register_blueprint(rankings_api.bp)
    return Api(app)


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    monkeypatch.setattr(rankings_api, "now", lambda: NOW)


def ok(response) -> dict:
    assert response.status_code == 200, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert list(body) == ["success", "message", "data"] and body["success"] is True and body["message"] == ""
    return body["data"]


def seed(engine, stats_tz: str = "UTC") -> None:
    """Half the logs rolled up, the other half (in the same buckets) only in the tail."""
    rows = workload(5)
    insert(engine, rows[: len(rows) // 2])
    tick(engine, Settings(database_url=engine.url.render_as_string(hide_password=False), stats_timezone=stats_tz))
    insert(engine, rows[len(rows) // 2 :])


def test_every_period_equals_the_raw_logs(engine):
    seed(engine)
    logs = committed_logs(engine)
    api = make(engine)
    for period in PERIODS:
        want = truth(logs, period)
        got = ok(api.get("/api/rankings", period=period))
        assert got == want, period
        # The test data reach every part of the answer.
        assert len(got["models"]) == 20 and len(got["vendors"]) > 5, period
        assert got["top_movers"] and got["top_droppers"], period
        assert got["models_history"]["models"][-1]["name"] == "Others", period
        assert got["vendor_share_history"]["vendors"][-1]["name"] == "Others", period
    # The default period is the week, also when empty.
    week = ok(api.get("/api/rankings", period="week"))
    assert ok(api.get("/api/rankings")) == week
    assert ok(api.get("/api/rankings", period="")) == week
    # Unknown parameters are ignored, as on the data endpoints.
    assert ok(api.get("/api/rankings", period="week", granularity="day", foo="bar")) == week


def test_the_tail_alone_and_the_summary_alone(engine):
    rows = workload(9, n=600)
    insert(engine, rows)
    api = make(engine)
    # Before any tick: everything from the tail.
    for period in PERIODS:
        assert ok(api.get("/api/rankings", period=period)) == truth(committed_logs(engine), period), period
    tick(engine, Settings(database_url=engine.url.render_as_string(hide_password=False)))
    extra = [log(created_at=NOW - 600, model="grok-3", prompt=10**7, completion=0)]
    insert(engine, extra)
    # After it: summary rows plus the one new log; with API_REALTIME=false, without it.
    month = ok(api.get("/api/rankings", period="month"))
    assert month == truth(committed_logs(engine), "month")
    assert month["models"][0]["model_name"] == "grok-3"
    summary_only = ok(make(engine, api_realtime=False).get("/api/rankings", period="month"))
    assert summary_only == truth(committed_logs(engine)[: len(rows)], "month")
    assert summary_only != month


def test_hourly_rows_when_the_daily_rows_are_not_utc_days(engine):
    # Daily rows in Kolkata days cannot be cut into UTC days: every period reads hourly
    # rows, with the same numbers; hours are labelled in STATS_TIMEZONE.
    tz = "Asia/Kolkata"
    seed(engine, stats_tz=tz)
    logs = committed_logs(engine)
    api = make(engine, stats_timezone=tz)
    for period in PERIODS:
        assert ok(api.get("/api/rankings", period=period)) == truth(logs, period, tz=tz), period
    today = ok(api.get("/api/rankings", period="today"))["models_history"]["buckets"]
    assert today[0] == {"ts": "2025-03-09T11:00:00Z", "label": "16:30"}


def test_empty_site(sqlite_engine):
    data = ok(make(sqlite_engine).get("/api/rankings", period="today"))
    assert data["models"] == data["vendors"] == data["top_movers"] == data["top_droppers"] == []
    assert data["models_history"]["points"] == data["models_history"]["models"] == []
    # 24 whole hours after NOW - 24 h, plus the current one.
    assert [b["label"] for b in data["models_history"]["buckets"]][:2] == ["11:00", "12:00"]
    assert len(data["vendor_share_history"]["buckets"]) == 24


def test_growth_previous_rank_and_shape(sqlite_engine):
    week_start = NOW - 7 * DAY
    insert(
        sqlite_engine,
        [
            log(created_at=week_start - DAY, model="gpt-4o", prompt=300, completion=0),
            log(created_at=week_start - DAY, model="claude-3-opus", prompt=100, completion=0),
            log(created_at=week_start - 2 * DAY, model="my-finetune", prompt=900, completion=0),
            log(created_at=NOW - DAY, model="gpt-4o", prompt=200, completion=0),
            log(created_at=NOW - DAY, model="claude-3-opus", prompt=400, completion=0),
            log(created_at=NOW - DAY, model="deepseek-chat", prompt=1, completion=0),
        ],
    )
    response = make(sqlite_engine).get("/api/rankings", period="week")
    data = ok(response)
    assert data["models"] == [
        {
            "rank": 1,
            "previous_rank": 3,
            "model_name": "claude-3-opus",
            "vendor": "Anthropic",
            "category": "all",
            "total_tokens": 400,
            "share": 0.6656,
            "growth_pct": 300.0,
        },
        {
            "rank": 2,
            "previous_rank": 2,
            "model_name": "gpt-4o",
            "vendor": "OpenAI",
            "category": "all",
            "total_tokens": 200,
            "share": 0.3328,
            "growth_pct": -33.3333,
        },
        # New this week: no previous_rank, growth 100.
        {
            "rank": 3,
            "model_name": "deepseek-chat",
            "vendor": "DeepSeek",
            "category": "all",
            "total_tokens": 1,
            "share": 0.0017,
            "growth_pct": 100.0,
        },
    ]
    assert data["top_movers"] == [
        {"model_name": "claude-3-opus", "vendor": "Anthropic", "rank_delta": 2, "current_rank": 1, "growth_pct": 300.0}
    ]
    assert data["top_droppers"] == []
    # The vendor of a model seen only last week still has last week's tokens.
    assert [(v["vendor"], v["growth_pct"]) for v in data["vendors"]] == [
        ("Anthropic", 300.0),
        ("OpenAI", -33.3333),
        ("DeepSeek", 100.0),
    ]
    # new-api's field order.
    text = response.get_data(as_text=True)
    assert text.index('"rank"') < text.index('"previous_rank"') < text.index('"model_name"')


# --- who may ask ---------------------------------------------------------------------------


def test_public_by_default_needs_no_headers_and_ignores_them(sqlite_engine):
    insert(sqlite_engine, log(created_at=NOW - 60, model="gpt-4o", prompt=5, completion=5))
    api = make(sqlite_engine)
    data = ok(api.get("/api/rankings", period="today"))
    assert data["models"][0]["total_tokens"] == 10
    assert ok(api.get("/api/rankings", "not-a-token", 12345, period="today")) == data


def test_auth_mode_requires_an_enabled_users_token(engine):
    token = add_user(engine, 1, "alice")
    disabled = add_user(engine, 2, "bob", status=m.STATUS_DISABLED)
    insert(engine, log(created_at=NOW - 60, model="gpt-4o", prompt=5, completion=5))
    api = make(engine, rankings="auth")
    assert_failure(api.get("/api/rankings", period="today"), 401, "access token")
    assert_failure(api.get("/api/rankings", "wrong", 1, period="today"), 401, "invalid access token")
    assert_failure(api.get("/api/rankings", token, 2, period="today"), 401, "New-Api-User")
    assert_failure(api.get("/api/rankings", disabled, 2, period="today"), 403, "disabled")
    # Authentication comes before the parameters.
    assert_failure(api.get("/api/rankings", period="bogus"), 401)
    assert ok(api.get("/api/rankings", token, 1, period="today"))["models"][0]["total_tokens"] == 10


def test_off_is_403_before_anything_else(sqlite_engine):
    token = add_user(sqlite_engine, 1, "root", role=m.ROLE_ROOT)
    api = make(sqlite_engine, rankings="off")
    for response in (
        api.get("/api/rankings"),
        api.get("/api/rankings", token, 1, period="week"),
        api.get("/api/rankings", period="bogus"),
    ):
        body = assert_failure(response, 403)
        assert body["message"] == "rankings is disabled"


# --- bad input -----------------------------------------------------------------------------


def test_bad_period_is_400(sqlite_engine):
    api = make(sqlite_engine)
    for bad in ("bogus", "Week", "all", " week", "day", "1"):
        body = assert_failure(api.get("/api/rankings", period=bad), 400)
        assert body["message"] == f"invalid ranking period: {bad}"
    body = assert_failure(api.get("/api/rankings", period="x" * 5000), 400, "invalid ranking period: xxx")
    assert len(body["message"]) < 120
    assert_failure(api.get("/api/rankings", query=[("period", "week"), ("period", "week")]), 400, "period", "once")
    assert_failure(api.client.post("/api/rankings"), 405)


def test_database_unreachable_is_503():
    engine = make_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    app = create_app(Settings(database_url="postgresql://postgres@127.0.0.1:1/nowhere"), engine=engine)
    if "rankings" not in app.blueprints:
        app.register_blueprint(rankings_api.bp)
    assert_failure(Api(app).get("/api/rankings"), 503, "database unavailable")


# --- settings and the vendor table ---------------------------------------------------------


def test_rankings_setting_from_the_environment():
    assert Settings.from_env({}).rankings == "public"
    for raw, mode in (("public", "public"), ("AUTH", "auth"), (" off ", "off"), ("", "public")):
        assert Settings.from_env({"RANKINGS": raw}).rankings == mode
    with pytest.raises(ConfigError, match="RANKINGS must be public, auth or off, got 'private'"):
        Settings.from_env({"RANKINGS": "private"})
    with pytest.raises(ConfigError, match="RANKINGS"):
        Settings(rankings="admin")


def test_vendors_file_is_checked(tmp_path):
    def settings(text: str | None) -> Settings:
        path = tmp_path / "vendors.json"
        if text is not None:
            path.write_text(text, encoding="utf-8")
        return Settings.from_env({"RANKINGS_VENDORS": str(path)})

    assert Settings.from_env({}).rankings_vendors == ()
    assert settings('{"gpt-": "Azure", "x": "Y"}').rankings_vendors == (("gpt-", "Azure"), ("x", "Y"))
    for text, message in (
        ("{", "is not valid JSON"),
        ('["gpt-", "OpenAI"]', "must hold one JSON object"),
        ('{"gpt-": 1}', "a vendor must be a non-empty string"),
        ('{"gpt-": ""}', "a vendor must be a non-empty string"),
        ('{" ": "X"}', "empty model name or prefix"),
    ):
        with pytest.raises(ConfigError, match=message):
            settings(text)
    with pytest.raises(ConfigError, match="RANKINGS_VENDORS: cannot read"):
        Settings.from_env({"RANKINGS_VENDORS": str(tmp_path / "missing.json")})


def test_default_vendor_table():
    table = VendorTable()
    for model, vendor in VENDOR.items():
        assert table.vendor(model) == vendor, model
    # The longest prefix wins; a routing prefix falls back to the name after it.
    assert table.vendor("meta-llama/Llama-3-70b") == "Meta"
    assert table.vendor("openrouter/anthropic/claude-3") == "Anthropic"
    assert table.vendor("") == UNKNOWN_VENDOR


def test_operator_vendors_override_and_extend_the_default(engine, tmp_path):
    path = tmp_path / "vendors.json"
    path.write_text(json.dumps({"gpt": "Azure OpenAI", "my-finetune": "Acme", "GPT-4O-MINI": "Mini Corp"}))
    overrides = Settings.from_env({"RANKINGS_VENDORS": str(path)}).rankings_vendors
    table = VendorTable(overrides)
    # An operator entry beats a longer default one ("gpt" over "gpt-"); the longest
    # operator entry wins among them; matching ignores case.
    assert table.vendor("gpt-4o") == "Azure OpenAI"
    assert table.vendor("gpt-4o-mini-2024") == "Mini Corp"
    assert table.vendor("my-finetune") == "Acme"
    assert table.vendor("claude-3") == "Anthropic"
    seed(engine)
    vendor = {
        **VENDOR,
        "my-finetune": "Acme",
        "gpt-4o": "Azure OpenAI",
        "openai/gpt-4.1": "Azure OpenAI",
        "gpt-4o-mini": "Mini Corp",
    }
    data = ok(make(engine, rankings_vendors=overrides).get("/api/rankings", period="month"))
    assert data == truth(committed_logs(engine), "month", vendor=vendor)
    assert {"Acme", "Azure OpenAI", "Mini Corp"} <= {v["vendor"] for v in data["vendors"]}


def test_whole_utc_days_come_from_the_daily_rows():
    from shared.rankings import window_parts

    start, end = NOW - 7 * DAY, NOW
    first_day, last_day = utc(2025, 3, 4), utc(2025, 3, 9)
    parts = [(view.granularity, lo, hi) for view, lo, hi in window_parts(start, end, "UTC", True, whole_days=True)]
    assert parts == [("hour", start, first_day - 1), ("day", first_day, last_day), ("hour", last_day + DAY, end)]
    # Days of another zone are not UTC days; hours are hours.
    for tz, whole_days in (("Asia/Kolkata", True), ("UTC", False)):
        parts = [(v.granularity, lo, hi) for v, lo, hi in window_parts(start, end, tz, True, whole_days=whole_days)]
        assert parts == [("hour", start, end)]
