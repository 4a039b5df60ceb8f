"""Realistic synthetic users and consume logs, for `usage-stats demo-data` and `up --demo`.

Traffic follows a daily cycle (quiet at night, busy in the afternoon), users differ in
volume by orders of magnitude (a few heavy users, many light ones), prompt and
completion tokens are log-normal, and each model has its own price. Each user calls
through one to three API keys (most traffic on the first) and belongs to a group; each
model is served by one or two channels; `tokens` and `channels` get matching rows, so
answers by key and channel are named. A few percent of rows are other log types
(errors, top-ups) that the rollup must ignore.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import models as m

# (model, quota per 1k prompt tokens, quota per 1k completion tokens); 500,000 quota = 1 USD
MODELS = [
    ("gpt-4o", 1250, 5000),
    ("gpt-4o-mini", 75, 300),
    ("claude-3-5-sonnet", 1500, 7500),
    ("claude-3-5-haiku", 400, 2000),
    ("gemini-1.5-pro", 625, 2500),
    ("deepseek-chat", 70, 140),
    ("qwen-max", 800, 3200),
    ("text-embedding-3-small", 10, 0),
]


# Channels (id, name), and the channels serving each model family with their shares.
CHANNELS = [
    (1, "openai-main"),
    (2, "openai-backup"),
    (3, "anthropic"),
    (4, "google-vertex"),
    (5, "deepseek"),
    (6, "aliyun"),
]
CHANNELS_OF = {
    "gpt": [(1, 0.8), (2, 0.2)],
    "text": [(1, 1.0)],
    "claude": [(3, 1.0)],
    "gemini": [(4, 1.0)],
    "deepseek": [(5, 1.0)],
    "qwen": [(6, 1.0)],
}
KEY_NAMES = ("default", "ci", "prod")
KEY_SHARES = (0.7, 0.2, 0.1)
GROUPS = ("default", "default", "vip", "svip")


def keys_of(user_id: int) -> list[tuple[int, str]]:
    """A demo user's API keys: (token id, name), one to three of them."""
    return [(user_id * 10 + k, KEY_NAMES[k]) for k in range(1 + user_id % 3)]


def group_of(user_id: int) -> str:
    return GROUPS[user_id % len(GROUPS)]


def _ensure_gateway(conn: Connection, people: list[tuple[int, str]]) -> None:
    """tokens and channels rows for the demo's keys and channels, where missing (their
    secret `key` columns get random text)."""
    have_tokens = {i for (i,) in conn.execute(sa.select(m.tokens.c.id))}
    tokens = [
        {"id": token_id, "user_id": uid, "key": secrets.token_hex(24), "name": name, "group": group_of(uid)}
        for uid, _ in people
        for token_id, name in keys_of(uid)
        if token_id not in have_tokens
    ]
    if tokens:
        conn.execute(sa.insert(m.tokens), tokens)
    have_channels = {i for (i,) in conn.execute(sa.select(m.channels.c.id))}
    channels = [{"id": i, "name": name, "key": secrets.token_hex(24)} for i, name in CHANNELS if i not in have_channels]
    if channels:
        conn.execute(sa.insert(m.channels), channels)


@dataclass(frozen=True)
class DemoUsers:
    """The credentials `demo-data` and `up --demo` print: an administrator and a user."""

    admin_id: int
    admin_token: str
    user_id: int
    user_token: str


def _ensure_users(conn: Connection, n_users: int) -> tuple[DemoUsers, list[tuple[int, str]]]:
    """The demo users (created when `users` is empty): the credentials to print, and the
    non-admin users (id, username) the logs are spread over."""
    u = m.users.c
    existing = conn.execute(sa.select(u.id, u.username, u.access_token, u.role).order_by(u.id)).all()
    if not existing:
        rows = [
            {
                "username": "admin",
                "display_name": "Demo Admin",
                "role": m.ROLE_ROOT,
                "access_token": secrets.token_hex(16),
                "password": "",
                "created_at": int(time.time()),
            }
        ]
        for i in range(1, n_users + 1):
            rows.append(
                {
                    "username": f"user{i:03d}",
                    "display_name": f"Demo User {i}",
                    "role": m.ROLE_USER,
                    "access_token": secrets.token_hex(16),
                    "password": "",
                    "created_at": int(time.time()),
                }
            )
        conn.execute(sa.insert(m.users), rows)
        existing = conn.execute(sa.select(u.id, u.username, u.access_token, u.role).order_by(u.id)).all()
    admin = next((r for r in existing if r.role >= m.ROLE_ADMIN), existing[0])
    common = [r for r in existing if r.role < m.ROLE_ADMIN] or [admin]
    return DemoUsers(admin.id, admin.access_token, common[0].id, common[0].access_token), [
        (r.id, r.username) for r in common
    ]


def generate(
    engine: Engine,
    days: int = 7,
    users: int = 20,
    logs_per_day: int = 2000,
    seed: int | None = None,
    end: int | None = None,
    gateway: Engine | None = None,
) -> tuple[DemoUsers, int]:
    """Add users (if there are none) and `days` days of logs ending at `end` (now).
    Returns the demo credentials and the number of logs written. `gateway`: the database
    of users, tokens and channels, when the logs' (`engine`) is another."""
    rnd = random.Random(seed)
    end = int(time.time()) if end is None else end
    start = end - days * 86400
    if gateway is not None and gateway is not engine:
        with gateway.begin() as conn:
            creds, people = _ensure_users(conn, users)
            _ensure_gateway(conn, people)
    with engine.begin() as conn:
        if gateway is None or gateway is engine:
            creds, people = _ensure_users(conn, users)
            _ensure_gateway(conn, people)
        # Zipf-like weights: user k is 1/k as busy as the busiest.
        weights = [1.0 / (k + 1) for k in range(len(people))]
        model_weights = [0.3, 0.25, 0.12, 0.08, 0.07, 0.1, 0.05, 0.03]
        total = 0
        batch: list[dict[str, Any]] = []
        for day in range(days):
            day_start = start + day * 86400
            # Sorted by time within the day, so ids grow with time as in a real gateway.
            instants = []
            for _ in range(logs_per_day):
                # Daily cycle: accept an instant with probability following a sine over the day.
                while True:
                    ts = day_start + rnd.randrange(86400)
                    hour = (ts % 86400) / 3600
                    if rnd.random() < 0.55 + 0.45 * math.sin((hour - 9) / 24 * 2 * math.pi):
                        break
                instants.append(ts)
            for ts in sorted(instants):
                uid, uname = rnd.choices(people, weights)[0]
                model, p_price, c_price = rnd.choices(MODELS, model_weights)[0]
                token_id, token_name = rnd.choices(keys_of(uid), KEY_SHARES[: len(keys_of(uid))])[0]
                served = CHANNELS_OF[model.split("-")[0]]
                channel = rnd.choices([c for c, _ in served], [w for _, w in served])[0]
                prompt = int(rnd.lognormvariate(6.5, 1.1))
                completion = 0 if c_price == 0 else int(rnd.lognormvariate(5.0, 1.0))
                kind = rnd.choices([m.LOG_CONSUME, m.LOG_ERROR, m.LOG_TOPUP], [0.95, 0.04, 0.01])[0]
                quota = (prompt * p_price + completion * c_price) // 1000 if kind == m.LOG_CONSUME else 0
                batch.append(
                    {
                        "user_id": uid,
                        "username": uname,
                        "created_at": ts,
                        "type": kind,
                        "model_name": model,
                        "quota": quota,
                        "prompt_tokens": prompt if kind == m.LOG_CONSUME else 0,
                        "completion_tokens": completion if kind == m.LOG_CONSUME else 0,
                        "use_time": max(1, completion // 50),
                        "is_stream": rnd.random() < 0.7,
                        "channel_id": channel,
                        "token_id": token_id,
                        "token_name": token_name,
                        "group": group_of(uid),
                        "content": "",
                        "ip": "",
                        "other": "",
                    }
                )
                if len(batch) >= 5000:
                    conn.execute(sa.insert(m.logs), batch)
                    total += len(batch)
                    batch.clear()
        if batch:
            conn.execute(sa.insert(m.logs), batch)
            total += len(batch)
    return creds, total
