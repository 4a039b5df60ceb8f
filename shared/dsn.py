"""new-api's database settings, SQL_DSN and LOG_SQL_DSN, as SQLAlchemy URLs.

new-api reads one string per database and picks the database family by its prefix
(facts from new-api's model/main.go and common/database.go, none of its code):

- `clickhouse://`, `tcp://`, `http://` or `https://`: ClickHouse, for LOG_SQL_DSN only.
  Refused here: ClickHouse `logs` rows all have id 0, so there is no id to follow.
- `postgres://` or `postgresql://`: a PostgreSQL URL, passed through unchanged
  (shared.db.normalize_url picks psycopg2 for it later).
- anything starting with `local` (new-api tests the prefix, not the whole word) or the
  empty string: SQLite, in the file named by SQLITE_PATH, by default
  `one-api.db?_busy_timeout=5000`. The query string is the Go driver's; it is dropped
  here (shared.db sets SQLite's busy timeout itself). A relative path is relative to
  new-api's working directory (/data in its image): give SQLITE_PATH as an absolute
  path when usage-stats runs elsewhere.
- anything else: a Go MySQL DSN, read as go-sql-driver/mysql reads it (its dsn.go):

      [user[:password]@][protocol[(address)]]/dbname[?param1=value1&...]

  The database name ends at the *last* `/`, the credentials at the last `@` before it,
  and the user name at the first `:`, so a password may hold any character (`@`, `:`,
  `/`, `?`, `#`, `%`, spaces), taken literally, never percent-decoded. The protocol is
  tcp (the default, also tcp4/tcp6) or unix; the address is `host`, `host:port`,
  `[ipv6]`, `[ipv6]:port` or a bare IPv6 address, port 3306 when absent, 127.0.0.1 when
  absent; for unix, a socket path (default /tmp/mysql.sock). The database name is
  percent-decoded; parameter values are query-decoded except charset and collation.

A Go MySQL DSN becomes `mysql+pymysql://user:password@host:port/db?charset=...`, with the
user, password and database percent-encoded by SQLAlchemy's own URL rendering, so
`sqlalchemy.engine.make_url` gives back exactly what the Go driver would have used.
Its parameters:

- charset: the first of its comma-separated list (the Go driver tries them in order
  until the server accepts one; every server new-api supports has the first one it
  asks for, utf8mb4). utf8mb4 when absent: new-api refuses a schema that is not.
- collation: passed on.
- tls: only false is accepted. Any other value names a Go TLS setup (a verified
  connection, skip-verify, preferred, or a config registered in Go code) that a URL
  cannot carry: a ConfigError says to write DATABASE_URL with the driver's ssl options,
  rather than silently connecting in plain text.
- Go driver behaviour only, ignored: parseTime and loc (how Go decodes DATETIME
  values; new-api's timestamps are integers), timeTruncate, interpolateParams,
  multiStatements, columnsWithAlias, clientFoundRows, tinyInt1IsBool, checkConnLiveness,
  rejectReadOnly, compress, maxAllowedPacket, connectionAttributes, the timeouts
  (timeout, readTimeout, writeTimeout: our engine's own apply), the authentication
  switches (allowAllFiles, allowCleartextPasswords, allowFallbackToPlaintext,
  allowNativePasswords, allowOldPasswords, serverPubKey: the Python driver negotiates
  the server's plugin itself) and strict (removed from the Go driver).
- any other key is a session variable the Go driver sets with `SET key = value, ...`
  right after connecting (for example sql_mode or time_zone): it becomes the driver's
  init_command, the same statement, so our sessions start as new-api's do.

No error message repeats the DSN: it may hold a password.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, unquote_plus

from sqlalchemy.engine import URL

from .config import ConfigError

# The SQLAlchemy dialect+driver a Go MySQL DSN is turned into.
MYSQL_DRIVERNAME = "mysql+pymysql"
# new-api's SQLite file when SQLITE_PATH is not set (common/database.go).
DEFAULT_SQLITE_PATH = "one-api.db?_busy_timeout=5000"

CLICKHOUSE_PREFIXES = ("clickhouse://", "tcp://", "http://", "https://")
POSTGRES_PREFIXES = ("postgres://", "postgresql://")
DEFAULT_CHARSET = "utf8mb4"
DEFAULT_PORT = 3306
DEFAULT_SOCKET = "/tmp/mysql.sock"
TCP_PROTOCOLS = ("", "tcp", "tcp4", "tcp6")

# Keys the Go driver reads itself (dsn.go's parameter switch) and that mean nothing to us.
IGNORED_PARAMS = frozenset(
    {
        "allowAllFiles",
        "allowCleartextPasswords",
        "allowFallbackToPlaintext",
        "allowNativePasswords",
        "allowOldPasswords",
        "checkConnLiveness",
        "clientFoundRows",
        "columnsWithAlias",
        "compress",
        "connectionAttributes",
        "interpolateParams",
        "loc",
        "maxAllowedPacket",
        "multiStatements",
        "parseTime",
        "readTimeout",
        "rejectReadOnly",
        "serverPubKey",
        "strict",
        "timeTruncate",
        "timeout",
        "tinyInt1IsBool",
        "writeTimeout",
    }
)

_EXAMPLE = "user:password@tcp(host:3306)/dbname?charset=utf8mb4"
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST_NAME = re.compile(r"[\w.-]+")
_SESSION_VARIABLE = re.compile(r"[A-Za-z0-9_.@]+")
# Go's strconv.ParseBool, which the driver's readBool follows.
_GO_FALSE = ("0", "f", "F", "false", "FALSE", "False")


def sqlalchemy_url(dsn: str, *, sqlite_path: str = DEFAULT_SQLITE_PATH, name: str = "SQL_DSN") -> str:
    """The SQLAlchemy URL of the database new-api opens for `dsn`, the value of its
    setting `name` (SQL_DSN or LOG_SQL_DSN, for messages); `sqlite_path` is new-api's
    SQLITE_PATH. Raises ConfigError for what cannot be read or honoured."""
    if dsn.startswith(CLICKHOUSE_PREFIXES):
        raise ConfigError(
            f"{name} names a ClickHouse database; usage-stats cannot read new-api's logs there "
            f"(their ids are all 0, so there is no id to follow): keep logs in MySQL, PostgreSQL or SQLite"
        )
    if dsn.startswith(POSTGRES_PREFIXES):
        return dsn
    if dsn == "" or dsn.startswith("local"):
        return sqlite_url(sqlite_path, name="SQLITE_PATH")
    return mysql_url(dsn, name=name)


def sqlite_url(path: str, *, name: str = "SQLITE_PATH") -> str:
    """The URL of new-api's SQLite file at `path`, without the Go driver's query string."""
    path = path.split("?", 1)[0]
    if path.startswith("file:"):
        # A URI filename (file:/x or file:///x), which the Go driver also accepts.
        path = path[len("file:") :]
        if path.startswith("//"):
            path = path[2:]
    if path in ("", ":memory:"):
        raise ConfigError(f"{name} must name new-api's SQLite file, such as /data/one-api.db")
    return URL.create("sqlite", database=path).render_as_string(hide_password=False)


def mysql_url(dsn: str, *, name: str = "SQL_DSN") -> str:
    """The SQLAlchemy URL for the Go MySQL DSN `dsn` (see the module docstring)."""
    slash = dsn.rfind("/")
    if slash < 0:
        raise ConfigError(f"{name} is not a MySQL DSN: it has no '/dbname'; new-api's form is {_EXAMPLE}")
    before, after = dsn[:slash], dsn[slash + 1 :]
    at = before.rfind("@")
    if at >= 0:
        user, _, password = before[:at].partition(":")
        where = before[at + 1 :]
    else:
        user = password = ""
        where = before
    protocol, address = _protocol_address(where, name, looks_like_url=_URL_SCHEME.match(dsn) is not None)

    dbname_raw, _, params = after.partition("?")
    dbname = _unescape(dbname_raw, f"{name}'s database name", plus=False)
    if not dbname:
        raise ConfigError(f"{name} names no database: write it after the address, as in {_EXAMPLE}")
    if password and not user:
        raise ConfigError(f"{name} has a password but no user name; new-api's form is {_EXAMPLE}")

    query = _query(params, name)
    host: str | None
    port: int | None
    if protocol == "unix":
        host, port = None, None
        query["unix_socket"] = address or DEFAULT_SOCKET
    else:
        host, port = _host_port(address, name)
    return URL.create(
        MYSQL_DRIVERNAME,
        username=user or None,
        password=password or None,
        host=host,
        port=port,
        database=dbname,
        query=query,
    ).render_as_string(hide_password=False)


def _protocol_address(where: str, name: str, *, looks_like_url: bool) -> tuple[str, str]:
    paren = where.find("(")
    if paren < 0:
        protocol, address = where, ""
    elif not where.endswith(")"):
        if ")" in where[paren + 1 :]:
            raise ConfigError(
                f"{name}: a parameter value holds an unescaped '/'; write it as %2F (as in loc=Asia%2FShanghai)"
            )
        raise ConfigError(f"{name}: the address after {where[:paren]!r} has no closing ')'")
    else:
        protocol, address = where[:paren], where[paren + 1 : -1]
    if protocol not in TCP_PROTOCOLS and protocol != "unix":
        if looks_like_url:
            hint = (
                f"; new-api reads a URL there only for PostgreSQL: a MySQL URL goes in DATABASE_URL "
                f"(mysql+pymysql://...), or write new-api's form {_EXAMPLE}"
            )
        elif "/" in protocol or "?" in protocol:
            hint = "; a '/' inside a parameter value must be written %2F"
        else:
            hint = f"; new-api's form is {_EXAMPLE}"
        raise ConfigError(f"{name}: the protocol before the address must be tcp or unix{hint}")
    return protocol, address


def _host_port(address: str, name: str) -> tuple[str, int]:
    """The host and port of a tcp address as the Go driver dials it."""
    port_text: str | None = None
    if address.startswith("["):
        end = address.find("]")
        rest = address[end + 1 :] if end >= 0 else ""
        if end < 0 or (rest and not rest.startswith(":")):
            raise ConfigError(f"{name}: the address {address!r} is not [ipv6] or [ipv6]:port")
        host = address[1:end]
        if rest:
            port_text = rest[1:]
        _check_ipv6(host, address, name)
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    elif ":" in address:
        # Several colons and no brackets: an IPv6 address without a port, as Go reads it.
        host = address
        _check_ipv6(host, address, name)
    else:
        host = address
    if not host:
        # Go dials the local system for an empty host.
        host = "127.0.0.1"
    elif ":" not in host and not _HOST_NAME.fullmatch(host):
        raise ConfigError(f"{name}: {host!r} is not a host name or IP address")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{name}: the port in {address!r} must be a number from 1 to 65535")
    return host, int(port_text)


def _check_ipv6(host: str, address: str, name: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ConfigError(f"{name}: {address!r} is not an IPv6 address (or host:port)") from None


def _query(params: str, name: str) -> dict[str, str]:
    """The driver's connect options for the DSN's parameters."""
    query = {"charset": DEFAULT_CHARSET}
    session: dict[str, str] = {}
    for item in params.split("&") if params else ():
        key, found, value = item.partition("=")
        if not found:
            continue  # the Go driver skips a parameter without '='
        if key == "charset":
            query["charset"] = value.split(",")[0] or DEFAULT_CHARSET
        elif key == "collation":
            query["collation"] = value
        elif key == "tls":
            if value not in _GO_FALSE:
                raise ConfigError(
                    f"{name} asks for TLS (tls={value}), which a Go DSN sets up in Go code: set DATABASE_URL to "
                    f"{MYSQL_DRIVERNAME}://user:password@host:3306/dbname?ssl_ca=/path/to/ca.pem instead"
                )
        elif key in IGNORED_PARAMS:
            continue
        else:
            if not _SESSION_VARIABLE.fullmatch(key):
                raise ConfigError(f"{name}: {key!r} is not a parameter or a session variable name")
            # The last occurrence wins, as in the Go driver's map of parameters.
            session.pop(key, None)
            session[key] = _unescape(value, f"{name}'s parameter {key}", plus=True)
    if session:
        query["init_command"] = "SET " + ", ".join(f"{key} = {value}" for key, value in session.items())
    return query


def _unescape(text: str, what: str, *, plus: bool) -> str:
    """Go's url.PathUnescape (plus=False) or url.QueryUnescape (plus=True): a '%' must
    start a two-digit hex escape."""
    if _BAD_ESCAPE.search(text):
        raise ConfigError(f"{what} has a '%' that does not start an escape such as %2F")
    return unquote_plus(text) if plus else unquote(text)
