"""new-api's SQL_DSN / LOG_SQL_DSN read as new-api reads them (shared.dsn), and the
precedence of the database settings (shared.config). Pure parsing, except the one
integration test that connects to MariaDB through a URL made from a Go DSN."""

from __future__ import annotations

import os
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from shared.config import ConfigError, Settings
from shared.dsn import CLICKHOUSE_PREFIXES, mysql_url, sqlalchemy_url, sqlite_url

SECRET = "Sup3r-Secret"


def parsed(dsn: str) -> sa.engine.URL:
    url = make_url(sqlalchemy_url(dsn))
    assert url.drivername == "mysql+pymysql"
    return url


# --- Go MySQL DSNs -------------------------------------------------------------------

# Any character but ':' in a user name (the first ':' ends it); anything in a password.
_chars = st.characters(blacklist_categories=("Cs",))
users = st.text(_chars.filter(lambda c: c != ":"), min_size=1, max_size=20)
passwords = st.text(_chars, min_size=1, max_size=30)
dbnames = st.text(_chars, min_size=1, max_size=20)
hosts = st.sampled_from(["127.0.0.1", "db.example.com", "new-api_mysql_1", "localhost", "::1", "2001:db8::5"])
ports = st.none() | st.integers(min_value=1, max_value=65535)


@given(user=users, password=passwords, host=hosts, port=ports, dbname=dbnames)
def test_go_dsn_round_trips_through_the_sqlalchemy_url(user, password, host, port, dbname):
    """What SQLAlchemy reads back from the URL is what the Go driver would have used: the
    password literally (never percent-decoded), the database name path-decoded."""
    address = f"[{host}]" if ":" in host else host
    if port is not None:
        address += f":{port}"
    dsn = f"{user}:{password}@tcp({address})/{quote(dbname, safe='')}?charset=utf8mb4&parseTime=True&loc=Local"
    url = parsed(dsn)
    assert (url.username, url.password, url.host, url.port, url.database) == (
        user,
        password,
        host,
        3306 if port is None else port,
        dbname,
    )
    assert dict(url.query) == {"charset": "utf8mb4"}


@pytest.mark.parametrize(
    "password",
    ["p@ss", "p:ss", "a/b", "what?", "#hash", "100%", "%40", "two words", " lead", "密码", "pässwörd", "@:/?#% ü"],
)
def test_odd_passwords_are_taken_literally(password):
    url = parsed(f"root:{password}@tcp(db:3306)/newapi")
    assert (url.username, url.password, url.host, url.database) == ("root", password, "db", "newapi")


def test_the_brief_example_and_new_apis_own_suffixes():
    url = parsed("root:123456@tcp(localhost:3306)/new-api?charset=utf8mb4&parseTime=true")
    assert url.render_as_string(hide_password=False) == (
        "mysql+pymysql://root:123456@localhost:3306/new-api?charset=utf8mb4"
    )


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("[::1]:3306", "::1", 3306),
        ("[::1]", "::1", 3306),
        ("::1", "::1", 3306),
        ("[2001:db8::1]:3307", "2001:db8::1", 3307),
        ("db", "db", 3306),
        ("db:3307", "db", 3307),
        ("10.0.0.5", "10.0.0.5", 3306),
        (":3307", "127.0.0.1", 3307),
        ("", "127.0.0.1", 3306),
    ],
)
def test_tcp_addresses(address, host, port):
    url = parsed(f"u:p@tcp({address})/db")
    assert (url.host, url.port) == (host, port)


@pytest.mark.parametrize(
    ("dsn", "host", "port"),
    [
        ("u:p@/db", "127.0.0.1", 3306),
        ("u:p@tcp/db", "127.0.0.1", 3306),
        ("/db", "127.0.0.1", 3306),
        ("tcp6(db)/db", "db", 3306),
        ("tcp4(db:1)/db", "db", 1),
    ],
)
def test_defaults_of_the_go_driver(dsn, host, port):
    url = parsed(dsn)
    assert (url.host, url.port, url.database) == (host, port, "db")


def test_no_user_means_no_user():
    url = parsed("tcp(db:3306)/newapi")
    assert (url.username, url.password) == (None, None)
    assert parsed("root@tcp(db)/x").password is None
    assert parsed("root:@tcp(db)/x").password is None


def test_unix_socket():
    url = parsed("root:pw@unix(/var/run/mysqld/mysqld.sock)/newapi?charset=utf8mb4")
    assert url.host is None and url.port is None
    assert url.database == "newapi"
    assert dict(url.query) == {"charset": "utf8mb4", "unix_socket": "/var/run/mysqld/mysqld.sock"}
    assert parsed("root@unix/newapi").query["unix_socket"] == "/tmp/mysql.sock"


def test_database_name_is_path_decoded_and_may_follow_a_slash_in_the_password():
    url = parsed("u:a/b@tcp(h)/my%20db")
    assert (url.password, url.database) == ("a/b", "my db")


def test_parameters():
    url = parsed(
        "u:p@tcp(h)/db?charset=utf8mb4,utf8&collation=utf8mb4_unicode_ci&parseTime=True&loc=Asia%2FShanghai"
        "&timeout=5s&tls=false&interpolateParams=true&noequals"
    )
    assert dict(url.query) == {"charset": "utf8mb4", "collation": "utf8mb4_unicode_ci"}
    # Without a charset: utf8mb4, which new-api insists on.
    assert parsed("u:p@tcp(h)/db").query["charset"] == "utf8mb4"


def test_session_variables_become_the_same_set_statement():
    url = parsed("u:p@tcp(h)/db?sql_mode=%27STRICT_TRANS_TABLES%27&time_zone=%27%2B08%3A00%27&sql_mode=%27ANSI%27")
    # The last sql_mode wins, as in the Go driver's map of parameters.
    assert url.query["init_command"] == "SET time_zone = '+08:00', sql_mode = 'ANSI'"


def test_postgres_urls_pass_through():
    for dsn in ("postgres://u:p@h:5432/newapi?sslmode=disable", "postgresql://u:p%40@h/newapi"):
        assert sqlalchemy_url(dsn) == dsn


@pytest.mark.parametrize("dsn", ["local", "localsqlite", ""])
def test_local_means_new_apis_sqlite_file(dsn):
    assert sqlalchemy_url(dsn) == "sqlite:///one-api.db"
    assert sqlalchemy_url(dsn, sqlite_path="/data/one-api.db?_busy_timeout=5000") == "sqlite:////data/one-api.db"


@pytest.mark.parametrize(
    ("path", "file"),
    [
        ("one-api.db?_busy_timeout=5000", "one-api.db"),
        ("/data/one api#1.db", "/data/one api#1.db"),
        ("file:/data/x.db?cache=shared", "/data/x.db"),
        ("file:///data/x.db", "/data/x.db"),
    ],
)
def test_sqlite_paths(path, file):
    url = make_url(sqlite_url(path))
    assert (url.drivername, url.database) == ("sqlite", file)


@pytest.mark.parametrize("prefix", CLICKHOUSE_PREFIXES)
def test_clickhouse_is_refused(prefix):
    with pytest.raises(ConfigError, match="LOG_SQL_DSN names a ClickHouse database"):
        sqlalchemy_url(f"{prefix}default:{SECRET}@ch:9000/logs", name="LOG_SQL_DSN")


@pytest.mark.parametrize(
    ("dsn", "match"),
    [
        (f"root:{SECRET}@tcp(db:3306)", "no '/dbname'"),
        (f"root:{SECRET}@tcp(db:3306)/", "names no database"),
        (f"root:{SECRET}@tcp(db:3306)/?charset=utf8mb4", "names no database"),
        (f"root:{SECRET}@tcp(db:3306/newapi", "no closing"),
        (f"root:{SECRET}@tcp(db)/newapi?loc=Asia/Shanghai", "unescaped '/'"),
        (f"root:{SECRET}@tcp(db:port)/newapi", "port"),
        (f"root:{SECRET}@tcp(db:)/newapi", "port"),
        (f"root:{SECRET}@tcp(db:70000)/newapi", "port"),
        (f"root:{SECRET}@tcp([::1)/newapi", "ipv6"),
        (f"root:{SECRET}@tcp([::1]x)/newapi", "ipv6"),
        (f"root:{SECRET}@tcp(fe80::zz)/newapi", "IPv6"),
        (f"root:{SECRET}@tcp(a b)/newapi", "host name"),
        (f"root:{SECRET}@udp(db)/newapi", "tcp or unix"),
        (f"mysql://root:{SECRET}@db:3306/newapi", "DATABASE_URL"),
        (f"root:{SECRET}@tcp(db)/newapi?tls=true", "TLS"),
        (f"root:{SECRET}@tcp(db)/newapi?tls=skip-verify", "TLS"),
        (f"root:{SECRET}@tcp(db)/new%zzapi", "escape"),
        (f"root:{SECRET}@tcp(db)/newapi?sql_mode=100%", "escape"),
        (f"root:{SECRET}@tcp(db)/newapi?bad;key=1", "session variable"),
        (f":{SECRET}@tcp(db)/newapi", "no user name"),
    ],
)
def test_bad_dsns_say_what_is_wrong_without_the_password(dsn, match):
    with pytest.raises(ConfigError, match=match) as caught:
        mysql_url(dsn)
    assert SECRET not in str(caught.value)
    assert str(caught.value).startswith("SQL_DSN")


# --- Settings: which setting names the database ---------------------------------------

GO_DSN = "gw:pw@tcp(mysql:3306)/new-api?charset=utf8mb4&parseTime=True"
GO_URL = "mysql+pymysql://gw:pw@mysql:3306/new-api?charset=utf8mb4"
LOG_DSN = "gw:pw@tcp(logs-db:3306)/new-api-logs"
LOG_URL = "mysql+pymysql://gw:pw@logs-db:3306/new-api-logs?charset=utf8mb4"


@pytest.mark.parametrize(
    ("environ", "main", "log"),
    [
        ({}, "sqlite:///usage-stats.db", None),
        ({"DATABASE_URL": "postgresql://u@h/db"}, "postgresql://u@h/db", None),
        ({"SQL_DSN": GO_DSN}, GO_URL, None),
        ({"SQL_DSN": "postgres://u:p@pg/newapi"}, "postgres://u:p@pg/newapi", None),
        ({"SQL_DSN": "local"}, "sqlite:///one-api.db", None),
        ({"SQL_DSN": "local", "SQLITE_PATH": "/data/one-api.db"}, "sqlite:////data/one-api.db", None),
        ({"SQLITE_PATH": "/data/one-api.db"}, "sqlite:////data/one-api.db", None),
        ({"DATABASE_URL": "sqlite:///mine.db", "SQL_DSN": GO_DSN}, "sqlite:///mine.db", None),
        ({"DATABASE_URL": "sqlite:///mine.db", "SQL_DSN": "not a dsn"}, "sqlite:///mine.db", None),
        ({"SQL_DSN": GO_DSN, "LOG_SQL_DSN": LOG_DSN}, GO_URL, LOG_URL),
        ({"SQL_DSN": GO_DSN, "LOG_DATABASE_URL": "postgresql://l@h/logs"}, GO_URL, "postgresql://l@h/logs"),
        (
            {"LOG_SQL_DSN": LOG_DSN, "LOG_DATABASE_URL": "sqlite:///logs.db"},
            "sqlite:///usage-stats.db",
            "sqlite:///logs.db",
        ),
        ({"LOG_SQL_DSN": LOG_DSN}, "sqlite:///usage-stats.db", LOG_URL),
        ({"SQL_DSN": GO_DSN, "LOG_SQL_DSN": GO_DSN}, GO_URL, None),
        ({"DATABASE_URL": GO_URL, "LOG_SQL_DSN": GO_DSN}, GO_URL, None),
        ({"SQL_DSN": "", "LOG_SQL_DSN": "", "DATABASE_URL": ""}, "sqlite:///usage-stats.db", None),
    ],
)
def test_database_settings_precedence(environ, main, log):
    settings = Settings.from_env(environ)
    assert (settings.database_url, settings.log_database_url) == (main, log)


def test_a_bad_dsn_names_its_setting():
    with pytest.raises(ConfigError, match=r"^SQL_DSN"):
        Settings.from_env({"SQL_DSN": f"root:{SECRET}@tcp(db)"})
    with pytest.raises(ConfigError, match=r"^LOG_SQL_DSN") as caught:
        Settings.from_env({"LOG_SQL_DSN": f"root:{SECRET}@tcp(db)/"})
    assert SECRET not in str(caught.value)


def test_settings_built_in_code_keep_logs_in_the_main_database():
    assert Settings().log_database_url is None


# --- The real thing ---------------------------------------------------------------------

MARIADB_DSN = os.environ.get("TEST_MARIADB_DSN", "root@tcp(127.0.0.1:3306)/test")


@pytest.mark.integration
def test_url_from_a_go_dsn_connects_to_mariadb():
    pytest.importorskip("pymysql")
    from shared.db import make_engine

    # A session variable of the DSN is set (the engine's own session settings, a UTC
    # time zone and a strict sql_mode, are applied after it and win).
    dsn = MARIADB_DSN + "?charset=utf8mb4&parseTime=True&loc=Local&group_concat_max_len=4321"
    engine = make_engine(Settings.from_env({"SQL_DSN": dsn}).database_url)
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT DATABASE(), @@session.group_concat_max_len, @@session.character_set_client"
            ).one()
    except sa.exc.OperationalError as exc:
        pytest.skip(f"MariaDB not reachable through {MARIADB_DSN}: {exc.orig}")
    finally:
        engine.dispose()
    assert tuple(row) == ("test", 4321, "utf8mb4")
