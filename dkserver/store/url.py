"""The ``Database`` setting: which backend, and where.

``--db`` / ``DK_DB`` takes a PostgreSQL URL (``postgresql://user@host:port/dbname``,
or the ``postgres://`` alias libpq also accepts) or SQLite: a plain path, or
``sqlite:`` followed by one (``sqlite:///var/lib/dk.db`` is ``/var/lib/dk.db``,
as in a ``file:`` URI; ``sqlite:dk.db`` is relative).  Plain paths stay exactly
what they were before URLs existed, ``:memory:`` and ``file:`` URIs included.

A URL can carry a password, and this value ends up in error lines, reprs and
logs, so the password lives only in :attr:`DatabaseUrl.conninfo` (excluded
from the repr) and everything printable shows ``***`` instead.  Error messages
describe the problem and never echo the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

_PG_SCHEMES = frozenset({"postgresql", "postgres"})
_URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")

#: libpq options accepted in the query string.  A closed list, so that a typo
#: (``sslmod=require``) stops startup instead of being silently ignored by a
#: server that then runs without TLS.
PG_OPTIONS = frozenset(
    {
        "application_name",
        "connect_timeout",
        "gssencmode",
        "host",
        "hostaddr",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "options",
        "passfile",
        "password",
        "port",
        "sslcert",
        "sslcrl",
        "sslkey",
        "sslmode",
        "sslrootcert",
        "target_session_attrs",
        "tcp_user_timeout",
    }
)

_SSLMODES = frozenset(
    {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
)
_INTEGER_OPTIONS = frozenset(
    {
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
    }
)


class DatabaseUrlError(ValueError):
    """The ``Database`` setting cannot be used; the message says why."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed ``Database`` setting.

    For SQLite only :attr:`path` is set.  For PostgreSQL, :attr:`conninfo` is
    the libpq connection string to hand to the driver (password included,
    hence ``repr=False``); :attr:`host`, :attr:`port`, :attr:`user` and
    :attr:`dbname` are for messages and logs.
    """

    kind: Literal["sqlite", "postgresql"]
    path: str | None = None
    conninfo: str = field(default="", repr=False)
    host: str | None = None
    port: int | None = None
    user: str | None = None
    dbname: str | None = None
    #: The query options other than the password, in the order given.
    options: tuple[tuple[str, str], ...] = ()
    has_password: bool = False

    @property
    def is_postgresql(self) -> bool:
        return self.kind == POSTGRESQL

    @property
    def redacted(self) -> str:
        """The setting as an operator would recognise it, password as ``***``."""
        if self.kind == SQLITE:
            return str(self.path)
        auth = ""
        if self.user is not None:
            auth = quote(self.user, safe="")
        if self.has_password:
            auth += ":***"
        if auth:
            auth += "@"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{self.port}" if self.port is not None else ""
        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in self.options)
        dbname = quote(self.dbname or "", safe="")
        tail = f"?{query}" if query else ""
        return f"postgresql://{auth}{host}{port}/{dbname}{tail}"

    def __str__(self) -> str:
        return self.redacted


def parse_database_url(text: str) -> DatabaseUrl:
    """Parse the ``Database`` setting; raises :class:`DatabaseUrlError`."""
    if not isinstance(text, str) or not text.strip():
        raise DatabaseUrlError("is empty; give a SQLite path or a postgresql:// URL")
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if sep and scheme in _PG_SCHEMES:
        return _parse_postgresql(text)
    if sep and scheme == SQLITE:
        return _parse_sqlite(rest)
    if _URL_LIKE.match(text) and scheme != "file":
        raise DatabaseUrlError(
            f"unsupported database URL scheme {scheme!r}; use postgresql://"
            "user@host:port/dbname, sqlite:///path or a plain file path"
        )
    return DatabaseUrl(kind=SQLITE, path=text)


def _parse_sqlite(rest: str) -> DatabaseUrl:
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise DatabaseUrlError(
                "a sqlite: URL names a file on this machine; write "
                "sqlite:///absolute/path or sqlite:relative/path"
            )
        path = slash + path
    else:
        path = rest
    if "?" in path or "#" in path:
        raise DatabaseUrlError(
            "sqlite: URLs take no options; use a file: URI for SQLite URI options"
        )
    path = unquote(path)
    if not path or path == "/":
        raise DatabaseUrlError("the sqlite: URL names no file")
    return DatabaseUrl(kind=SQLITE, path=path)


def _parse_postgresql(text: str) -> DatabaseUrl:
    parts = urlsplit(text)
    if parts.fragment:
        raise DatabaseUrlError("a postgresql:// URL has no #fragment")
    if not text.lower().startswith(("postgresql://", "postgres://")):
        raise DatabaseUrlError(
            "write the PostgreSQL URL as postgresql://user@host:port/dbname"
        )
    hostport = parts.netloc.rpartition("@")[2]
    if "," in hostport:
        raise DatabaseUrlError("several hosts in one postgresql:// URL: not supported")
    try:
        port = parts.port
    except ValueError:
        raise DatabaseUrlError(
            "the postgresql:// URL has a bad port; it must be a number from 1 to 65535"
        )
    if port is not None and not 1 <= port <= 65535:
        raise DatabaseUrlError(
            "the postgresql:// URL has a bad port; it must be a number from 1 to 65535"
        )
    if hostport.endswith(":") and port is None:
        raise DatabaseUrlError(
            "the postgresql:// URL has an empty port; leave out the ':' for 5432"
        )
    dbname = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not dbname or "/" in dbname:
        raise DatabaseUrlError(
            "the postgresql:// URL names no database; write "
            "postgresql://user@host:port/dbname"
        )
    host = unquote(parts.hostname) if parts.hostname else None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None

    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        query = None
    if query is None or (parts.query and not query):
        raise DatabaseUrlError(
            "the postgresql:// URL has a malformed query; write ?name=value&name=value"
        )
    params: dict[str, str] = {}
    options: list[tuple[str, str]] = []
    for key, value in query:
        _check_option(key, value, params)
        params[key] = value
        if key == "password":
            password = value
        else:
            options.append((key, value))
    if "host" in params:
        host = params["host"]
    if "port" in params:
        port = int(params["port"])

    conn: dict[str, str] = {"dbname": dbname}
    if host:
        conn["host"] = host
    if port is not None:
        conn["port"] = str(port)
    if user:
        conn["user"] = user
    if password is not None:
        conn["password"] = password
    for key, value in params.items():
        conn[key] = value
    return DatabaseUrl(
        kind=POSTGRESQL,
        conninfo=" ".join(f"{k}={_quote_conninfo(v)}" for k, v in conn.items()),
        host=host,
        port=port,
        user=user,
        dbname=dbname,
        options=tuple((k, v) for k, v in options if k not in ("host", "port")),
        has_password=password is not None,
    )


def _check_option(key: str, value: str, seen: dict[str, str]) -> None:
    if key not in PG_OPTIONS:
        raise DatabaseUrlError(
            f"the postgresql:// URL has an unknown option {key[:40]!r}; known: "
            + ", ".join(sorted(PG_OPTIONS - {"password"}))
        )
    if key in seen:
        raise DatabaseUrlError(f"the postgresql:// URL gives option {key!r} twice")
    if key == "password":
        return
    if key == "sslmode" and value not in _SSLMODES:
        raise DatabaseUrlError(
            "the postgresql:// URL has a bad sslmode; one of "
            + ", ".join(sorted(_SSLMODES))
        )
    if key in _INTEGER_OPTIONS and not value.isdigit():
        raise DatabaseUrlError(f"the postgresql:// URL option {key} must be a number")
    if key == "port" and not (value.isdigit() and 1 <= int(value) <= 65535):
        raise DatabaseUrlError(
            "the postgresql:// URL has a bad port; it must be a number from 1 to 65535"
        )


def _quote_conninfo(value: str) -> str:
    """Quote a libpq conninfo value: in single quotes, ``\\`` and ``'`` escaped."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
