"""Issue 6.7: nobody reads what is not theirs, tokens are compared in constant time and
never logged, administrator routes refuse users.

- Every route the app has (read from its URL map, so a route added later is covered
  too), called by a common user with every parameter that could name someone else
  (username, user_id, New-Api-User...): no answer holds another user's rows.
- The administrator routes refuse common, disabled and deleted users.
- The final token comparison is hmac.compare_digest over the exact bytes, for a right
  and a wrong token alike (shared.auth).
- At DEBUG, on every logger, through the app and through the running server: no token
  of any request appears in any log line, whether the request succeeded or failed.
"""

from __future__ import annotations

import hmac
import logging

import pytest

from api import create_app
from shared import auth as shared_auth
from shared.config import Settings
from tests.faults.http import get
from tests.faults.live import PEOPLE, SECRET_QUOTA, T0, live_api

pytestmark = pytest.mark.integration

ADMIN_ROUTES = [("GET", "/api/data/"), ("GET", "/api/data/reaggregate/x"), ("POST", "/api/data/reaggregate")]
# /api/rankings is public by default, as in new-api (RANKINGS=auth or off closes it,
# tests/test_rankings.py): site-wide totals per model and vendor, no user's rows.
PUBLIC = {"/healthz", "/readyz", "/api/openapi.json", "/metrics", "/", "/api/rankings"}


@pytest.fixture(scope="module")
def live():
    with live_api("usage_stats_security") as api:
        yield api


@pytest.fixture
def app(live):
    return create_app(Settings(database_url=live.url, stats_timezone="UTC"))


def routes(app):
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            path = rule.rule
            for arg in rule.arguments:
                path = path.replace(f"<{arg}>", "x").replace(f"<string:{arg}>", "x")
            yield method, path


def spying_params(window):
    base = {k: str(v) for k, v in window.items()}
    tries = [base]
    for name in ("username", "user", "user_id", "userId", "id", "uid"):
        for value in ("bob", "2", "admin", "3"):
            tries.append({**base, name: value})
    tries.append({**base, "granularity": "day"})
    return tries


def test_no_route_gives_a_user_anyone_elses_rows(live, app):
    from urllib.parse import urlencode

    bob_quota = str(SECRET_QUOTA["bob"])
    seen = 0
    for method, path in routes(app):
        for params in spying_params(live.window):
            for headers in (
                live.headers("alice"),
                {**live.headers("alice"), "New-Api-User": "2"},  # claiming to be bob
                {"Authorization": f"Bearer {live.tokens['alice']}", "New-Api-User": "2, 1"},
            ):
                body = (
                    b'{"start_timestamp": %d, "end_timestamp": %d, "user_id": 2}' % (T0, T0 + 86400)
                    if method == "POST"
                    else None
                )
                a = get(
                    live.port,
                    path + "?" + urlencode(params),
                    {**headers, "Content-Type": "application/json"},
                    method=method,
                    body=body,
                )
                seen += 1
                assert a.status < 500, (method, path, a.status, a.text[:300])
                assert bob_quota not in a.text, f"bob's rows in {method} {path}?{urlencode(params)}: {a.text[:300]}"
                assert '"username":"bob"' not in a.text.replace(" ", "")
    assert seen > 100
    # And alice does see her own rows, so the check above looks at real answers.
    own = get(
        live.port,
        f"/api/data/self?start_timestamp={T0 - 86400}&end_timestamp={T0 + 86400}",
        live.headers("alice"),
    )
    assert own.status == 200 and str(SECRET_QUOTA["alice"]) in own.text


def test_public_routes_hold_no_usage_and_no_token(live, app):
    """The routes without authentication are the documented ones, and show no user's data."""
    for method, path in routes(app):
        a = get(live.port, path, method=method)
        if a.status < 400:
            assert path in PUBLIC, f"{method} {path} answers {a.status} without a token"
        for token in live.tokens.values():
            assert token not in a.text
        for quota in SECRET_QUOTA.values():
            assert f'"quota":{quota}' not in a.text.replace(" ", "")


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
@pytest.mark.parametrize("who,status", [("alice", 403), ("bob", 403), ("carol", 403), ("fallen", 403), ("ghost", 401)])
def test_admin_routes_refuse_users(live, method, path, who, status):
    body = b'{"start_timestamp": 1, "end_timestamp": 2}' if method == "POST" else None
    a = get(live.port, path, {**live.headers(who), "Content-Type": "application/json"}, method=method, body=body)
    assert a.status == status and a.is_failure_shape(), (a.status, a.text)


def test_admin_routes_admit_administrators(live):
    for who in ("admin", "root"):
        a = get(
            live.port,
            f"/api/data/?username=bob&start_timestamp={T0 - 86400}&end_timestamp={T0 + 86400}",
            live.headers(who),
        )
        assert a.status == 200 and str(SECRET_QUOTA["bob"]) in a.text


def test_tokens_are_compared_with_compare_digest(live, app, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(shared_auth.hmac, "compare_digest", spy)
    client = app.test_client()
    token = live.tokens["alice"]
    assert client.get("/api/data/self", headers=live.headers("alice")).status_code == 200
    assert calls == [(token.encode(), token.encode())]
    # PostgreSQL's char(32) ignores trailing blanks in `=`: the row is found, and the
    # exact comparison is what refuses the token.
    calls.clear()
    r = client.get("/api/data/self", headers={"Authorization": f"Bearer {token[:20]}", "New-Api-User": "1"})
    assert r.status_code == 401
    assert not calls or all(a != b for a, b in calls)


def test_no_token_in_any_log_line(live, app, caplog):
    client = app.test_client()
    tokens = list(live.tokens.values())
    with caplog.at_level(logging.DEBUG):
        for who in PEOPLE:
            for path in ("/api/data/self", "/api/data/", "/api/data/reaggregate/x", "/nope"):
                client.get(path, headers=live.headers(who))
                client.get(path, headers={**live.headers(who), "New-Api-User": "999"})
                client.get(path + "?start_timestamp=x", headers=live.headers(who))
                client.get(path, headers={"Authorization": live.headers(who)["Authorization"][7:], "New-Api-User": "1"})
            client.post("/api/data/reaggregate", headers=live.headers(who), data=b"{bad json")
    assert caplog.records, "nothing was logged: the check would be empty"
    for record in caplog.records:
        line = record.getMessage() + " " + str(record.__dict__)
        for token in tokens:
            assert token not in line, f"a token in a log line: {record.name}: {record.getMessage()[:200]}"
    # The running server's output (gunicorn, the access log, every request above and the
    # other tests of this module).
    for who in PEOPLE:
        get(live.port, "/api/data/self", live.headers(who))
    output = live.server.output()
    assert "GET /api/data/self" in output
    for token in tokens:
        assert token not in output
