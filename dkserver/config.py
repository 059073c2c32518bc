"""Configuration, parsed once into an immutable object.

Environment variables (as in the original server) give the defaults; command
line options override them.  Every problem raises :class:`ConfigError` naming
the offending setting, which ``twistd`` shows as one line.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dkserver.cluster.url import (
    RedisUrl,
    RedisUrlError,
    check_node_id,
    default_node_id,
    parse_redis_url,
)
from dkserver.store.url import DatabaseUrl, DatabaseUrlError, parse_database_url

DEFAULT_HTTPS = ":443"
DEFAULT_HTTP = ":80"
DEFAULT_DB = "dkserver.db"
DEFAULT_CERT = os.path.join("certs", "server.pem")
DEFAULT_KEY = os.path.join("certs", "server.key")

# PostgreSQL only: connections per process (the group writer holds one per
# batch, reads share the rest), how long one statement may run before it is
# cancelled, how long connecting may take.
DEFAULT_DB_POOL_SIZE = 8
DEFAULT_DB_STATEMENT_TIMEOUT = 30.0
DEFAULT_DB_CONNECT_TIMEOUT = 10.0
# Both backends: read connections beside the writer's, for the public reads
# (PostgreSQL: in addition to DK_DB_POOL_SIZE).
DEFAULT_DB_READ_POOL_SIZE = 4

# Per client IP and per user id, for /auth/register and /auth/login: enough
# for a person retrying by hand and a client reconnecting, far too little for
# guessing or flooding.
DEFAULT_LOGIN_RATE = 1.0
DEFAULT_LOGIN_BURST = 20

# Per user, for REST writes (/user/trackers, /user/apis).  The desktop app
# posts its tracker list every 10 s (0.1/s); a person saving APIs by hand
# never reaches 20 in a row.
DEFAULT_WRITE_RATE = 1.0
DEFAULT_WRITE_BURST = 20

#: ``--log-format`` / ``DK_LOG_FORMAT``.
LOG_FORMATS = ("text", "json")


# Accounts (dkserver.auth.revocation): who may register, the ``iss`` of the
# tokens, and how often each server reads the revocation versions (a ban or
# ``token revoke`` takes effect within this on every node).
REGISTRATION_MODES = ("open", "closed", "invite")
DEFAULT_TOKEN_ISSUER = "dkserver"  # noqa: S105 (a name)
DEFAULT_REVOCATION_POLL = 0.5

# Per client IP, for the REST reads anyone may make without a token
# (/active-users, /auth/users/*, /auth/check-userid/*, /user/descriptions/*,
# /trackers, /apis, /stats before its token check): a client looks up a few
# keys and lists users now and then, a NAT of several clients stays below
# 10 a second; a loop fetching the user list (2 MB with 100,000 users) is
# capped at that, after a burst of 50.
DEFAULT_PUBLIC_READ_RATE = 10.0
DEFAULT_PUBLIC_READ_BURST = 50

# Retention (docs/operating/retention.md).  Delivered direct messages and
# broadcasts: 30 days after delivery (broadcasts: after they were sent), long
# enough for a client to resync a month; pending messages: 90 days, a
# quarter for an absent user to come back.  Sessions and message events are
# rolled up into daily aggregates after 30 days (at least 7: the weekly
# active users count reads the raw sessions).
DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_PENDING_MAX_DAYS = 90.0
DEFAULT_STATS_ROLLUP_DAYS = 30.0
MIN_RETENTION_DAYS = 1.0
MIN_STATS_ROLLUP_DAYS = 7.0
# Per recipient, pending (undelivered) direct messages: far beyond what a
# person receives while offline, far below what fills a disk.
DEFAULT_PENDING_QUOTA_MESSAGES = 10_000
DEFAULT_PENDING_QUOTA_BYTES = 100 * 1024 * 1024
# Pruning: a pass every 5 minutes, 200 rows per transaction (a few ms of
# the database's time on either backend, so a relayed message waits at most
# one such batch; docs/performance.md, "Retention: relay while pruning").
DEFAULT_PRUNE_INTERVAL = 300.0
DEFAULT_PRUNE_BATCH = 200


class ConfigError(Exception):
    """A setting is invalid; the message names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Config:
    https: str = DEFAULT_HTTPS
    http: str | None = DEFAULT_HTTP
    #: The ``--db`` / ``DK_DB`` text: a SQLite path or a postgresql:// URL
    #: (possibly with a password: log `database`, never this).
    db_path: str = field(default=DEFAULT_DB, repr=False)
    #: ``db_path`` parsed; set from it when not given.
    database: DatabaseUrl | None = None
    db_pool_size: int = DEFAULT_DB_POOL_SIZE
    db_statement_timeout: float = DEFAULT_DB_STATEMENT_TIMEOUT
    db_connect_timeout: float = DEFAULT_DB_CONNECT_TIMEOUT
    db_read_pool_size: int = DEFAULT_DB_READ_POOL_SIZE
    #: ``--redis`` / ``DK_REDIS_URL``: set, this process is one node of a
    #: cluster sharing the PostgreSQL database; None, a single process.
    redis: RedisUrl | None = None
    #: This node's name in the cluster (sessions, presence); unique per node.
    node_id: str = ""
    cert_path: str = DEFAULT_CERT
    key_path: str = DEFAULT_KEY
    message_rate: float = 5.0
    message_burst: int = 10
    login_rate: float = DEFAULT_LOGIN_RATE
    login_burst: int = DEFAULT_LOGIN_BURST
    write_rate: float = DEFAULT_WRITE_RATE
    write_burst: int = DEFAULT_WRITE_BURST
    public_read_rate: float = DEFAULT_PUBLIC_READ_RATE
    public_read_burst: int = DEFAULT_PUBLIC_READ_BURST
    jwt_secret: str | None = field(default=None, repr=False)
    #: Where a generated JWT secret is kept when JWT_SECRET is unset; empty
    #: on PostgreSQL without DK_JWT_SECRET_FILE: the secret is then kept in
    #: the database, shared by every node (`secret_in_database`).
    jwt_secret_path: str = ""
    sqlite_synchronous: str = "NORMAL"
    admin_users: frozenset[str] = frozenset()
    #: Browser origins allowed to open /ws; empty means "the server's own".
    allowed_origins: tuple[str, ...] = ()
    forward_timeout: float = 30.0
    #: An operator-supplied build of the client (``<dir>/dk.pyz``, from
    #: scripts/build-client) to serve at /download/*; empty: the server builds
    #: its own from the installed packages into ``client_path``.
    client_dir: str = ""
    #: Where the server's own build goes: beside the database (SQLite), the
    #: secret file, or else in `state_directory` (PostgreSQL).
    client_path: str = ""
    #: Operator folders: tracker packages (/tracker-apps, /tracker-folder/*)
    #: and desktop app binaries (/download/app/*); None means those are 404.
    tracker_dir: str | None = None
    app_dir: str | None = None
    #: Open (or opening) WebSocket connections allowed per client IP and per
    #: user; past either, /ws answers 429.
    max_connections_per_ip: int = 1000
    max_connections_per_user: int = 32
    challenge_ttl: float = 60.0
    max_body: int = 1024 * 1024
    max_ws_message: int = 1024 * 1024
    ws_ping_interval: float = 54.0
    ws_ping_timeout: float = 60.0
    #: The HTTPS listener expects a PROXY protocol (v1 or v2) header first, as
    #: a TCP load balancer sends it, and takes the client's address from it;
    #: a connection without one is dropped.
    proxy_protocol: bool = False
    #: Idle HTTP connections and half-sent requests are closed after this.
    http_timeout: float = 30.0
    #: How long shutdown waits for in-flight requests and writes.
    shutdown_grace: float = 10.0
    #: ``text`` (twistd's lines) or ``json`` (one object per event,
    #: dkserver.logs).
    log_format: str = "text"
    #: How often the certificate and key files are checked for a change
    #: (a renewal); SIGHUP reloads at once.
    tls_reload_interval: float = 5.0
    #: ``open``, ``closed`` or ``invite`` (codes from ``dkserver invite``).
    registration: str = "open"
    #: The tokens' ``iss``; changing it invalidates every token.
    token_issuer: str = DEFAULT_TOKEN_ISSUER
    revocation_poll: float = DEFAULT_REVOCATION_POLL
    #: Retention in days; None keeps forever ("off").
    retention_days: float | None = DEFAULT_RETENTION_DAYS
    pending_max_days: float | None = DEFAULT_PENDING_MAX_DAYS
    stats_rollup_days: float | None = DEFAULT_STATS_ROLLUP_DAYS
    #: Pending direct messages (count, UTF-8 bytes of content) one recipient
    #: may have; None: no limit ("off").
    pending_quota_messages: int | None = DEFAULT_PENDING_QUOTA_MESSAGES
    pending_quota_bytes: int | None = DEFAULT_PENDING_QUOTA_BYTES
    #: Seconds between prune passes; None: the server never prunes by itself
    #: (``dkserver prune`` still does).
    prune_interval: float | None = DEFAULT_PRUNE_INTERVAL
    #: Rows deleted per transaction.
    prune_batch: int = DEFAULT_PRUNE_BATCH

    def __post_init__(self) -> None:
        if self.database is None:
            object.__setattr__(self, "database", parse_database_url(self.db_path))
        # Beside a SQLite file; a PostgreSQL URL names no place for a file,
        # and its nodes share the secret through the database instead.
        if not self.jwt_secret_path and not self.database.is_postgresql:
            object.__setattr__(
                self, "jwt_secret_path", f"{self.database.path}.jwt-secret"
            )
        if not self.node_id:
            object.__setattr__(self, "node_id", default_node_id(self.https))
        if not self.client_path:
            # The server's own client build goes into its state directory:
            # beside the SQLite file, or beside the secret file on PostgreSQL.
            if not self.database.is_postgresql:
                state_dir = os.path.dirname(self.database.path)
            elif self.jwt_secret_path:
                state_dir = os.path.dirname(self.jwt_secret_path)
            else:
                state_dir = state_directory(os.environ)
            object.__setattr__(self, "client_path", os.path.join(state_dir, "dk.pyz"))

    @property
    def secret_in_database(self) -> bool:
        """Neither ``JWT_SECRET`` nor a secret file (PostgreSQL only): the
        nodes sharing the database keep the JWT secret in it."""
        return not self.jwt_secret and not self.jwt_secret_path


def state_directory(environ: Mapping[str, str]) -> str:
    """Where a PostgreSQL node without a secret file keeps its own files
    (the ``dk.pyz`` it builds for /download).

    A URL names no place on disk, and the working directory is wherever the
    node happened to be started (a test's, an operator's shell).  The file is
    a cache, rebuilt from the installed packages, so: the directory systemd
    made for the unit (``CACHE_DIRECTORY`` or ``STATE_DIRECTORY``, first
    entry; deploy/dkserver.service has ``StateDirectory=dkserver``), else
    the XDG cache directory (``$XDG_CACHE_HOME/dkserver``, by default
    ``~/.cache/dkserver``).
    """
    for key in ("CACHE_DIRECTORY", "STATE_DIRECTORY"):
        first = environ.get(key, "").split(":")[0]
        if os.path.isabs(first):
            return first
    cache = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):
        home = environ.get("HOME") or os.path.expanduser("~")
        cache = os.path.join(home, ".cache")
    return os.path.join(cache, "dkserver")


def _positive_float(key: str, raw: str | float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(key, f"not a number: {raw!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(key, f"must be a positive number, got {raw!r}")
    return value


def _positive_int(key: str, raw: str | int) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(key, f"not an integer: {raw!r}")
    if value < 1:
        raise ConfigError(key, f"must be at least 1, got {raw!r}")
    return value


def _off(raw: object) -> bool:
    return str(raw).strip().lower() in ("0", "off", "none", "never")


def _days(key: str, raw: object, minimum: float) -> float | None:
    """A retention in days, at least ``minimum``; 0 / "off": keep forever."""
    if raw is None or _off(raw):
        return None
    value = _positive_float(key, raw)
    if value < minimum:
        raise ConfigError(
            key, f"must be at least {minimum:g} days (or 0/off), got {raw!r}"
        )
    return value


def _limit(key: str, raw: object) -> int | None:
    """A whole-number limit; 0 / "off": no limit."""
    if raw is None or _off(raw):
        return None
    return _positive_int(key, raw)


def _interval(key: str, raw: object) -> float | None:
    """Seconds between runs; 0 / "off": never."""
    if raw is None or _off(raw):
        return None
    return _positive_float(key, raw)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(key: str, raw: object) -> bool:
    """An on/off setting; a value that is neither is a typo, not "off"."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(key, f"must be 1/true/yes/on or 0/false/no/off, got {raw!r}")


_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]*):(?P<port>\d{1,5})$")
_ENDPOINT_TYPES = ("tcp:", "tcp6:", "unix:", "systemd:")


def endpoint_description(key: str, addr: str) -> str:
    """Turn ``host:port``, ``:port`` or an endpoint description into one.

    TLS is added by dkserver itself around whatever stream endpoint is named,
    so ``ssl:`` descriptions are refused rather than silently double-wrapped.
    """
    addr = addr.strip()
    m = _HOST_PORT.match(addr)
    if m:
        port = int(m.group("port"))
        if port > 65535:
            raise ConfigError(key, f"port out of range in {addr!r}")
        host = m.group("host").strip("[]")
        desc = f"tcp:port={port}"
        if host:
            desc = f"tcp6:port={port}" if ":" in host else desc
            desc += ":interface=" + host.replace(":", r"\:")
        return desc
    if addr.startswith(_ENDPOINT_TYPES):
        return addr
    raise ConfigError(
        key,
        f"{addr!r} is not host:port, :port or a tcp:/tcp6:/unix:/systemd: "
        "endpoint description",
    )


def _folder(key: str, raw: object) -> str | None:
    """An operator folder: unset is fine (the routes answer 404), a typo is not.

    Checked once at startup; a folder removed later just makes the routes 404.
    """
    if raw is None:
        return None
    path = str(raw)
    if not os.path.isdir(path):
        raise ConfigError(key, f"{path!r} is not an existing directory")
    return path


def _split_list(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def from_sources(options: Mapping[str, object], environ: Mapping[str, str]) -> Config:
    """Build the configuration: options win over the environment."""

    def pick(opt: str, env: str | None, default: object) -> object:
        value = options.get(opt)
        if value is not None:
            return value
        if env is not None and environ.get(env, "").strip():
            return environ[env].strip()
        return default

    https = str(pick("https", "SERVER_ADDR", DEFAULT_HTTPS))
    endpoint_description("https", https)
    http_raw = pick("http", "HTTP_ADDR", DEFAULT_HTTP)
    http: str | None = None
    if str(http_raw).lower() != "none":
        http = str(http_raw)
        endpoint_description("http", http)

    sync = str(pick("sqlite_synchronous", "DK_SQLITE_SYNCHRONOUS", "NORMAL")).upper()
    if sync not in ("NORMAL", "FULL"):
        raise ConfigError(
            "DK_SQLITE_SYNCHRONOUS", f"must be NORMAL or FULL, got {sync!r}"
        )

    db_path = str(pick("db", "DK_DB", DEFAULT_DB))
    try:
        database = parse_database_url(db_path)
    except DatabaseUrlError as e:
        raise ConfigError("DK_DB", str(e)) from None
    jwt_secret = environ.get("JWT_SECRET") or None
    jwt_secret_path = str(pick("jwt_secret_file", "DK_JWT_SECRET_FILE", ""))
    # PostgreSQL without a secret file: the build goes to the state
    # directory (read from ``environ`` here, as every other setting).
    client_path = (
        os.path.join(state_directory(environ), "dk.pyz")
        if database.is_postgresql and not jwt_secret_path
        else ""
    )
    redis = None
    redis_raw = str(pick("redis", "DK_REDIS_URL", "")).strip()
    if redis_raw:
        try:
            redis = parse_redis_url(redis_raw)
        except RedisUrlError as e:
            raise ConfigError("DK_REDIS_URL", str(e)) from None
        if not database.is_postgresql:
            # Nodes must share one database; a SQLite file is one process's.
            raise ConfigError(
                "DK_REDIS_URL",
                "a cluster needs a PostgreSQL database shared by every node; "
                "DK_DB is a SQLite file",
            )
    node_raw = str(pick("node_id", "DK_NODE_ID", "")).strip()
    try:
        node_id = check_node_id(node_raw) if node_raw else default_node_id(https)
    except ValueError as e:
        raise ConfigError("DK_NODE_ID", str(e)) from None
    origins = tuple(_split_list(str(pick("allowed_origins", "DK_ALLOWED_ORIGINS", ""))))
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(
                "DK_ALLOWED_ORIGINS", f"{origin!r} is not an origin like https://host"
            )

    log_format = str(pick("log_format", "DK_LOG_FORMAT", "text")).strip().lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError("DK_LOG_FORMAT", f"must be text or json, got {log_format!r}")
    registration = str(pick("registration", "DK_REGISTRATION", "open")).lower()
    if registration not in REGISTRATION_MODES:
        raise ConfigError(
            "DK_REGISTRATION", f"must be open, closed or invite, got {registration!r}"
        )
    token_issuer = str(pick("token_issuer", "DK_TOKEN_ISSUER", DEFAULT_TOKEN_ISSUER))
    if len(token_issuer) > 256 or not token_issuer.isprintable():
        raise ConfigError(
            "DK_TOKEN_ISSUER", "must be printable and at most 256 characters"
        )
    revocation_poll = _positive_float(
        "DK_REVOCATION_POLL",
        pick("revocation_poll", "DK_REVOCATION_POLL", DEFAULT_REVOCATION_POLL),
    )
    if revocation_poll > 60:
        raise ConfigError(
            "DK_REVOCATION_POLL", f"must be at most 60 seconds, got {revocation_poll!r}"
        )

    return Config(
        https=https,
        http=http,
        db_path=db_path,
        database=database,
        db_pool_size=_positive_int(
            "DK_DB_POOL_SIZE",
            pick("db_pool_size", "DK_DB_POOL_SIZE", DEFAULT_DB_POOL_SIZE),
        ),
        db_statement_timeout=_positive_float(
            "DK_DB_STATEMENT_TIMEOUT",
            pick(
                "db_statement_timeout",
                "DK_DB_STATEMENT_TIMEOUT",
                DEFAULT_DB_STATEMENT_TIMEOUT,
            ),
        ),
        db_connect_timeout=_positive_float(
            "DK_DB_CONNECT_TIMEOUT",
            pick(
                "db_connect_timeout",
                "DK_DB_CONNECT_TIMEOUT",
                DEFAULT_DB_CONNECT_TIMEOUT,
            ),
        ),
        db_read_pool_size=_positive_int(
            "DK_DB_READ_POOL_SIZE",
            pick(
                "db_read_pool_size", "DK_DB_READ_POOL_SIZE", DEFAULT_DB_READ_POOL_SIZE
            ),
        ),
        redis=redis,
        node_id=node_id,
        cert_path=str(pick("cert", "DK_CERT", DEFAULT_CERT)),
        key_path=str(pick("key", "DK_KEY", DEFAULT_KEY)),
        message_rate=_positive_float(
            "MESSAGE_RATE_LIMIT", pick("rate", "MESSAGE_RATE_LIMIT", 5.0)
        ),
        message_burst=_positive_int(
            "MESSAGE_BURST_LIMIT", pick("burst", "MESSAGE_BURST_LIMIT", 10)
        ),
        login_rate=_positive_float(
            "LOGIN_RATE_LIMIT",
            pick("login_rate", "LOGIN_RATE_LIMIT", DEFAULT_LOGIN_RATE),
        ),
        login_burst=_positive_int(
            "LOGIN_BURST_LIMIT",
            pick("login_burst", "LOGIN_BURST_LIMIT", DEFAULT_LOGIN_BURST),
        ),
        write_rate=_positive_float(
            "DK_WRITE_RATE_LIMIT",
            pick("write_rate", "DK_WRITE_RATE_LIMIT", DEFAULT_WRITE_RATE),
        ),
        write_burst=_positive_int(
            "DK_WRITE_BURST_LIMIT",
            pick("write_burst", "DK_WRITE_BURST_LIMIT", DEFAULT_WRITE_BURST),
        ),
        public_read_rate=_positive_float(
            "DK_PUBLIC_READ_RATE_LIMIT",
            pick(
                "public_read_rate",
                "DK_PUBLIC_READ_RATE_LIMIT",
                DEFAULT_PUBLIC_READ_RATE,
            ),
        ),
        public_read_burst=_positive_int(
            "DK_PUBLIC_READ_BURST_LIMIT",
            pick(
                "public_read_burst",
                "DK_PUBLIC_READ_BURST_LIMIT",
                DEFAULT_PUBLIC_READ_BURST,
            ),
        ),
        jwt_secret=jwt_secret,
        jwt_secret_path=jwt_secret_path,
        sqlite_synchronous=sync,
        admin_users=frozenset(_split_list(str(pick("admins", "DK_ADMIN_USERS", "")))),
        allowed_origins=origins,
        client_dir=str(pick("client_dir", "DK_CLIENT_DIR", "")),
        client_path=client_path,
        tracker_dir=_folder(
            "DK_TRACKER_DIR", pick("tracker_dir", "DK_TRACKER_DIR", None)
        ),
        app_dir=_folder("DK_APP_DIR", pick("app_dir", "DK_APP_DIR", None)),
        max_connections_per_ip=_positive_int(
            "DK_MAX_CONNECTIONS_PER_IP",
            pick("max_connections_per_ip", "DK_MAX_CONNECTIONS_PER_IP", 1000),
        ),
        max_connections_per_user=_positive_int(
            "DK_MAX_CONNECTIONS_PER_USER",
            pick("max_connections_per_user", "DK_MAX_CONNECTIONS_PER_USER", 32),
        ),
        forward_timeout=_positive_float(
            "DK_FORWARD_TIMEOUT", pick("forward_timeout", "DK_FORWARD_TIMEOUT", 30.0)
        ),
        shutdown_grace=_positive_float(
            "DK_SHUTDOWN_GRACE", pick("shutdown_grace", "DK_SHUTDOWN_GRACE", 10.0)
        ),
        tls_reload_interval=_positive_float(
            "DK_TLS_RELOAD_INTERVAL",
            pick("tls_reload_interval", "DK_TLS_RELOAD_INTERVAL", 5.0),
        ),
        proxy_protocol=_flag(
            "DK_PROXY_PROTOCOL",
            pick("proxy_protocol", "DK_PROXY_PROTOCOL", False),
        ),
        log_format=log_format,
        registration=registration,
        token_issuer=token_issuer,
        revocation_poll=revocation_poll,
        retention_days=_days(
            "DK_RETENTION_DAYS",
            pick("retention_days", "DK_RETENTION_DAYS", DEFAULT_RETENTION_DAYS),
            MIN_RETENTION_DAYS,
        ),
        pending_max_days=_days(
            "DK_PENDING_MAX_DAYS",
            pick("pending_max_days", "DK_PENDING_MAX_DAYS", DEFAULT_PENDING_MAX_DAYS),
            MIN_RETENTION_DAYS,
        ),
        stats_rollup_days=_days(
            "DK_STATS_ROLLUP_DAYS",
            pick(
                "stats_rollup_days", "DK_STATS_ROLLUP_DAYS", DEFAULT_STATS_ROLLUP_DAYS
            ),
            MIN_STATS_ROLLUP_DAYS,
        ),
        pending_quota_messages=_limit(
            "DK_PENDING_QUOTA_MESSAGES",
            pick(
                "pending_quota_messages",
                "DK_PENDING_QUOTA_MESSAGES",
                DEFAULT_PENDING_QUOTA_MESSAGES,
            ),
        ),
        pending_quota_bytes=_limit(
            "DK_PENDING_QUOTA_BYTES",
            pick(
                "pending_quota_bytes",
                "DK_PENDING_QUOTA_BYTES",
                DEFAULT_PENDING_QUOTA_BYTES,
            ),
        ),
        prune_interval=_interval(
            "DK_PRUNE_INTERVAL",
            pick("prune_interval", "DK_PRUNE_INTERVAL", DEFAULT_PRUNE_INTERVAL),
        ),
        prune_batch=_positive_int(
            "DK_PRUNE_BATCH", pick("prune_batch", "DK_PRUNE_BATCH", DEFAULT_PRUNE_BATCH)
        ),
    )
