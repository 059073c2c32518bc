"""The schema and its migrations, in one place, versioned by ``PRAGMA user_version``.

Version 0 is either an empty file or a database written by the original Go
server (same table and column names, which dkserver keeps so an operator can
point it at their existing file). Version 1 upgrades that in place:

- ``messages`` is rebuilt without the original's
  ``FOREIGN KEY(to_user) REFERENCES users(user_id)``: broadcasts are stored
  with ``to_user = 'broadcast'``, which only worked because the original ran
  with foreign keys off. Ids and ``sqlite_sequence`` are kept, so ids are
  never reused.
- ``messages.received_ns`` and ``users.registered_ns`` (Unix nanoseconds) let
  the broadcast query compare instants as integers instead of text written
  with arbitrary UTC offsets and fraction lengths.
- indexes for the queries the stores run.

Version 5 (see ``_to_v5``) adds the original's ``user_trackers`` and
``user_apis`` where missing and makes each name unique per user, keeping the
newest of any duplicates the original wrote.

Version 6 (see ``_to_v6``) is for a cluster of nodes on one database:
``sessions.node_id`` and the ``server_settings`` table.

Version 7 (see ``_to_v7``) is for accounts that can be revoked
(dkserver.store.accounts): ``users.status``, ``users.tokens_valid_after_ms``
and the ``invites`` table.

Version 8 (see ``_to_v8``) is for retention (dkserver.store.retention):
``messages.delivered_ns``, the ``stats_daily`` roll-up table and the indexes
pruning walks.

Migrations run on the pool's thread, with foreign keys off (a table rebuild
needs that, and the pragma is a no-op inside a transaction) and all steps in
one transaction, checked by ``PRAGMA foreign_key_check`` before commit.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from twisted.enterprise import adbapi
from twisted.logger import Logger

from dkserver import timestamps
from dkserver.store.errors import DatabaseUnusable, StoreError
from dkserver.store.files import diagnose_sqlite_files

log = Logger()

LATEST_VERSION = 8

_COPY_CHUNK = 1000

_USERS = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    registered_ns INTEGER
)"""

_MESSAGES = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    from_user TEXT NOT NULL,
    to_user TEXT NOT NULL,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    content TEXT NOT NULL,
    status TEXT NOT NULL,
    is_broadcast BOOLEAN DEFAULT FALSE,
    signature TEXT,
    is_forward_message BOOLEAN DEFAULT FALSE,
    received_ns INTEGER,
    FOREIGN KEY(from_user) REFERENCES users(user_id)
)"""

# The original server's definitions, created only where missing.
_OTHER_TABLES = (
    """
CREATE TABLE IF NOT EXISTS broadcast_deliveries (
    message_id INT,
    user_id VARCHAR(255),
    delivered_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (message_id, user_id),
    FOREIGN KEY (message_id) REFERENCES messages(id)
)""",
    """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    start_time DATETIME NOT NULL,
    end_time DATETIME,
    duration INTEGER
)""",
    """
CREATE TABLE IF NOT EXISTS message_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    is_broadcast BOOLEAN NOT NULL,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY(session_id) REFERENCES sessions(session_id)
)""",
    """
CREATE TABLE IF NOT EXISTS user_descriptions (
    user_id TEXT PRIMARY KEY,
    descriptions TEXT NOT NULL,
    FOREIGN KEY(user_id) REFERENCES users(user_id)
)""",
)

_INDEXES = (
    # pending direct messages of a recipient, oldest first
    "CREATE INDEX IF NOT EXISTS messages_pending_idx ON messages(to_user, status, id)",
    # broadcasts in id order
    "CREATE INDEX IF NOT EXISTS messages_broadcast_idx ON messages(is_broadcast, id)",
    "CREATE INDEX IF NOT EXISTS sessions_user_start_idx"
    " ON sessions(user_id, start_time)",
    # sessions left open by a crash, closed at startup
    "CREATE INDEX IF NOT EXISTS sessions_open_idx"
    " ON sessions(session_id) WHERE end_time IS NULL",
    "CREATE INDEX IF NOT EXISTS message_events_timestamp_idx"
    " ON message_events(timestamp)",
    "CREATE INDEX IF NOT EXISTS message_events_user_idx"
    " ON message_events(user_id, timestamp)",
)

# Columns of the original messages table, with a value for databases written
# by an older original that lacked the later ones.
_LEGACY_MESSAGE_COLUMNS = (
    ("id", None),
    ("from_user", None),
    ("to_user", None),
    ("timestamp", None),
    ("content", None),
    ("status", None),
    ("is_broadcast", "0"),
    ("signature", "NULL"),
    ("is_forward_message", "0"),
)


async def migrate(pool: adbapi.ConnectionPool) -> int:
    """Bring the database to ``LATEST_VERSION``; returns the version found."""
    return await pool.runWithConnection(migrate_connection)


def migrate_connection(conn: sqlite3.Connection) -> int:
    """Blocking: bring ``conn``'s database to ``LATEST_VERSION`` (as
    :func:`migrate` does on the pool's thread; ``port-db`` runs it on its
    private copy of a file); returns the version found."""
    conn.commit()  # PRAGMA foreign_keys is ignored inside a transaction
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        conn.execute("BEGIN IMMEDIATE")  # no other process migrates meanwhile
        found = version_of(conn)
        check_version(found)
        for version in range(found + 1, LATEST_VERSION + 1):
            log.info("migrating database schema to version {version}", version=version)
            _STEPS[version](conn)
        if found < LATEST_VERSION:
            _check_foreign_keys(conn)
            conn.execute(f"PRAGMA user_version={LATEST_VERSION:d}")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.execute("PRAGMA foreign_keys=ON")
    return found


def version_of(conn: sqlite3.Connection) -> int:
    """The schema version of ``conn``'s database (0: empty, or the original's)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def check_version(found: int) -> None:
    """Refuse a schema newer than this dkserver's."""
    if found > LATEST_VERSION:
        raise DatabaseUnusable(
            f"database schema version {found} is newer than this dkserver "
            f"supports ({LATEST_VERSION}); upgrade dkserver or restore a "
            "backup taken before the newer version ran"
        )


def preflight(path: str) -> None:
    """Fail fast, before the reactor runs, if ``path`` cannot be used.

    Blocking is fine here (it runs once, at startup, before anything is
    served); the migration itself still runs on the pool's thread. Raises
    `OSError` for a missing or unwritable directory or file, and
    `DatabaseUnusable` for a file that is not SQLite or has a newer schema.
    """
    if path == ":memory:" or path.startswith("file:"):
        return
    db = Path(path)
    directory = db.parent.resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"database directory {directory} does not exist")
    # WAL mode creates -wal and -shm files beside the database
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"database directory {directory} is not writable")
    if not db.exists():
        return
    if not os.access(db, os.R_OK | os.W_OK):
        raise PermissionError(f"database file {db} is not readable and writable")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = version_of(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        # Opening a WAL database creates its -shm file: on a full disk or a
        # read-only mount that fails as a bare "disk I/O error".
        diagnosis = diagnose_sqlite_files(str(db))
        if diagnosis is not None:
            cause, detail = diagnosis
            raise DatabaseUnusable(f"cannot open {db}: {cause} ({detail})") from e
        raise DatabaseUnusable(f"{db} is not a usable SQLite database: {e}") from e
    check_version(found)


def _check_foreign_keys(conn: sqlite3.Connection) -> None:
    """Fail on violations in tables a migration rebuilt; only warn elsewhere.

    The original server never enforced foreign keys, so an old database may
    hold stray rows (say, an event of a session that was never written).
    They do no harm to dkserver and must not stop an operator's upgrade; a
    violation in ``messages`` would mean the rebuild itself went wrong.
    """
    counts: dict[str, int] = {}
    for table, *_ in conn.execute("PRAGMA foreign_key_check"):
        counts[table] = counts.get(table, 0) + 1
    if "messages" in counts:
        raise StoreError(
            f"migration left {counts['messages']} messages rows whose from_user "
            "is not a registered user; the database was not changed"
        )
    for table, count in sorted(counts.items()):
        log.warn(
            "legacy table {table} has {count} rows with dangling foreign keys",
            table=table,
            count=count,
        )


def tables(conn: sqlite3.Connection) -> set[str]:
    """The names of the database's tables."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {name for (name,) in rows}


def sequences(conn: sqlite3.Connection) -> dict[str, int]:
    """The highest id each AUTOINCREMENT table ever handed out, which may
    exceed the highest id left (deleted rows): ids are never reused."""
    if "sqlite_sequence" not in tables(conn):
        return {}
    return dict(conn.execute("SELECT name, seq FROM sqlite_sequence"))


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _legacy_ns(text: object) -> int | None:
    """Unix ns of a timestamp the original wrote (maybe naive, meaning UTC)."""
    if not isinstance(text, str):
        return None
    try:
        return timestamps.parse(text, allow_naive=True).unix_nanos
    except timestamps.TimestampError:
        return None


def _to_v1(conn: sqlite3.Connection) -> None:
    existing = tables(conn)
    if "users" in existing:
        _upgrade_users(conn)
    else:
        conn.execute(_USERS)
    if "messages" in existing:
        _rebuild_messages(conn)
    else:
        conn.execute(_MESSAGES.format(name="messages"))
    for ddl in _OTHER_TABLES:
        conn.execute(ddl)
    for ddl in _INDEXES:
        conn.execute(ddl)


def _upgrade_users(conn: sqlite3.Connection) -> None:
    if "registered_ns" in _columns(conn, "users"):
        return
    conn.execute("ALTER TABLE users ADD COLUMN registered_ns INTEGER")
    rows = conn.execute("SELECT user_id, created_at FROM users").fetchall()
    # An unreadable created_at offers the user every broadcast rather than none.
    conn.executemany(
        "UPDATE users SET registered_ns = ? WHERE user_id = ?",
        [(_legacy_ns(created) or 0, user_id) for user_id, created in rows],
    )


def _rebuild_messages(conn: sqlite3.Connection) -> None:
    """The SQLite "12-step" table rebuild: create, copy, drop, rename."""
    present = _columns(conn, "messages")
    select = []
    for column, default in _LEGACY_MESSAGE_COLUMNS:
        if column in present:
            select.append(column)
        elif default is None:
            raise StoreError(
                f"table messages has no column {column}; this is not a "
                "DistributedKnowledge database"
            )
        else:
            select.append(default)
    conn.execute(_MESSAGES.format(name="messages_v1"))  # ensures sqlite_sequence
    old_seq = _sequence(conn, "messages")
    names = ", ".join(column for column, _ in _LEGACY_MESSAGE_COLUMNS)
    insert = (
        f"INSERT INTO messages_v1 ({names}, received_ns)"
        f" VALUES ({', '.join('?' * (len(_LEGACY_MESSAGE_COLUMNS) + 1))})"
    )
    query = f"SELECT {', '.join(select)} FROM messages WHERE id > ? ORDER BY id LIMIT ?"
    last_id = -(2**63)
    while rows := conn.execute(query, (last_id, _COPY_CHUNK)).fetchall():
        # received_ns of a legacy row: the sender's instant, the best we know
        conn.executemany(insert, [(*row, _legacy_ns(row[3])) for row in rows])
        last_id = rows[-1][0]
    conn.execute("DROP TABLE messages")
    conn.execute("ALTER TABLE messages_v1 RENAME TO messages")

    seq = max(old_seq, _sequence(conn, "messages"), last_id, 0)
    conn.execute(
        "DELETE FROM sqlite_sequence WHERE name IN ('messages', 'messages_v1')"
    )
    conn.execute(
        "INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?)", (seq,)
    )


def _sequence(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute(
        "SELECT MAX(seq) FROM sqlite_sequence WHERE name = ?", (table,)
    ).fetchone()
    return int(row[0] or 0)


# Version 2: partial indexes, so each stored message touches as few b-trees
# as possible (the write path's cost, docs/performance.md).  A direct message
# enters only the pending index and leaves it when delivered; a broadcast only
# the broadcast index; message events carry no secondary index (the admin
# statistics scan them).  Queries must name the literal 'pending' / 1 for
# SQLite to use these indexes.
_V2_INDEXES = (
    "DROP INDEX IF EXISTS messages_pending_idx",
    "DROP INDEX IF EXISTS messages_broadcast_idx",
    "DROP INDEX IF EXISTS message_events_timestamp_idx",
    "DROP INDEX IF EXISTS message_events_user_idx",
    "CREATE INDEX IF NOT EXISTS messages_pending_v2"
    " ON messages(to_user, id) WHERE status = 'pending'",
    "CREATE INDEX IF NOT EXISTS messages_broadcast_v2"
    " ON messages(id) WHERE is_broadcast = 1",
)


def _to_v2(conn: sqlite3.Connection) -> None:
    for ddl in _V2_INDEXES:
        conn.execute(ddl)
    conn.execute("ANALYZE")


def _to_v3(conn: sqlite3.Connection) -> None:
    """``users.broadcast_floor``: every broadcast with an id at or below it is
    done for the user (delivered, their own, or older than their
    registration), so a connect looks only at newer ones instead of every
    broadcast since registration.  It only ever grows: deliveries are never
    undone and new broadcasts always get higher ids."""
    if "broadcast_floor" not in _columns(conn, "users"):
        conn.execute(
            "ALTER TABLE users ADD COLUMN broadcast_floor INTEGER NOT NULL DEFAULT 0"
        )


def _to_v4(conn: sqlite3.Connection) -> None:
    """``messages.client_timestamp``: the sender's exact timestamp text, kept
    only where rendering the ``timestamp`` column (the original's format,
    which it parses and so must keep) would not give it back, say ``Z``
    sent and ``+00:00`` stored.  NULL in every older row, which is then
    rendered as the original renders it."""
    if "client_timestamp" not in _columns(conn, "messages"):
        conn.execute("ALTER TABLE messages ADD COLUMN client_timestamp TEXT")


# Version 5: the original's tracker and API tables, one row per name.
_USER_TRACKERS = """
CREATE TABLE IF NOT EXISTS user_trackers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    tracker_name TEXT NOT NULL,
    tracker_description TEXT,
    tracker_version TEXT,
    tracker_documents TEXT,  -- JSON object with datasets and templates maps
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY(user_id) REFERENCES users(user_id)
)"""

_USER_APIS = """
CREATE TABLE IF NOT EXISTS user_apis (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    api_name TEXT NOT NULL,
    documents TEXT,  -- JSON array of document names
    policy TEXT,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY(user_id) REFERENCES users(user_id)
)"""

#: table -> the column that names a row within one user's rows
_NAMED_TABLES = (("user_trackers", "tracker_name"), ("user_apis", "api_name"))


def _to_v5(conn: sqlite3.Connection) -> None:
    """Create the tables where the original never did; make names unique.

    The original checked for an existing name and then inserted, so two
    concurrent requests could leave two rows of one name.  Its timestamps are
    Go's local-time text (``2026-11-26 01:45:42.123456789-03:00``) or SQLite's
    naive UTC ``CURRENT_TIMESTAMP``; they are rewritten as UTC in one fixed
    format first, so that ``ORDER BY updated_at`` (newest first, and "newest
    duplicate wins" here) compares instants, not text.  Text that is no
    timestamp is left alone; it reads as Go's zero time.
    """
    conn.execute(_USER_TRACKERS)
    conn.execute(_USER_APIS)
    for table, name_column in _NAMED_TABLES:
        _normalize_times(conn, table)
        # Unreadable times (NULL after normalizing) count as the oldest.
        conn.execute(
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM ("
            f"  SELECT id, ROW_NUMBER() OVER (PARTITION BY user_id, {name_column}"
            f"   ORDER BY {utc_time_or_null('updated_at')} DESC, id DESC) AS rank"
            f"  FROM {table}) WHERE rank > 1)"
        )
        conn.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_user_name"
            f" ON {table}(user_id, {name_column})"
        )


def utc_time_or_null(column: str) -> str:
    """SQL: ``column`` if it holds the normalized UTC form, else NULL.

    Sorting on this puts rows whose time the original wrote as something
    unreadable last in ``DESC`` order instead of first (letters sort after
    digits).
    """
    return (
        f"CASE WHEN {column} LIKE '____-__-__ __:__:__._________+00:00'"
        f" THEN {column} END"
    )


def _normalize_times(conn: sqlite3.Connection, table: str) -> None:
    rows = conn.execute(f"SELECT id, created_at, updated_at FROM {table}").fetchall()
    updates = []
    for row_id, created, updated in rows:
        new_created, new_updated = _utc_text(created), _utc_text(updated)
        if (new_created, new_updated) != (created, updated):
            updates.append((new_created, new_updated, row_id))
    conn.executemany(
        f"UPDATE {table} SET created_at = ?, updated_at = ? WHERE id = ?", updates
    )


def _utc_text(value: object) -> object:
    ns = _legacy_ns(value)
    text = None if ns is None else timestamps.utc_storage_text(ns)
    return value if text is None else text


# Version 6: several nodes on one database (PostgreSQL; SQLite gets the same
# schema so that the stores and port-db see one).
_SERVER_SETTINGS = """
CREATE TABLE IF NOT EXISTS server_settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
)"""

#: A node's own sessions left open, closed when it restarts or dies.
_SESSIONS_NODE_OPEN_INDEX = (
    "CREATE INDEX IF NOT EXISTS sessions_node_open_idx"
    " ON sessions(node_id) WHERE end_time IS NULL"
)


def _to_v6(conn: sqlite3.Connection) -> None:
    """``sessions.node_id``: which node holds (held) the connection, so a
    restarting node closes only its own sessions and survivors close a dead
    node's; NULL in every older row.  ``server_settings``: what every node of
    a cluster must agree on (the JWT secret on PostgreSQL); unused on SQLite,
    whose single process keeps its secret in a file."""
    if "node_id" not in _columns(conn, "sessions"):
        conn.execute("ALTER TABLE sessions ADD COLUMN node_id TEXT")
    conn.execute(_SESSIONS_NODE_OPEN_INDEX)
    conn.execute(_SERVER_SETTINGS)


#: Accounts that can be revoked (dkserver.store.accounts): a user's status
#: (``active``, ``banned``, ``deleted``), the instant (Unix ms) before which
#: every token of theirs is refused, and the invite codes.
_INVITES = """
CREATE TABLE IF NOT EXISTS invites (
    code_hash TEXT PRIMARY KEY,
    uses_left INTEGER NOT NULL,
    expires_ms INTEGER,
    created_ms INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
)"""

#: The few users the token check must know about, loaded into memory.
_USERS_REVOKED_INDEX = (
    "CREATE INDEX IF NOT EXISTS users_revoked_idx ON users(user_id)"
    " WHERE status <> 'active' OR tokens_valid_after_ms IS NOT NULL"
)

# Version 8: retention.  ``delivered_ns`` (Unix ns) is when a direct message
# was marked delivered: retention counts from it.  ``stats_daily`` holds what
# pruned rows contributed to /stats, per UTC day: ``metric`` is
# 'direct_messages' / 'broadcast_messages' / 'pending_dropped' (bucket 0),
# 'sessions' (bucket: duration in seconds, -1 none) or 'message_events'
# (bucket: UTC hour, -1 none).
STATS_DAILY = """
CREATE TABLE IF NOT EXISTS stats_daily (
    day TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (day, metric, bucket)
)"""

_V8_INDEXES = (
    # delivered direct messages by delivery time (only those have one)
    "CREATE INDEX IF NOT EXISTS messages_delivered_v8"
    " ON messages(delivered_ns) WHERE delivered_ns IS NOT NULL",
    # ended sessions by end time; written once per connection, not per message
    "CREATE INDEX IF NOT EXISTS sessions_end_v8"
    " ON sessions(end_time) WHERE end_time IS NOT NULL",
    # the foreign key's own index: without it every deleted session makes
    # the database scan all of message_events for referencing rows
    "CREATE INDEX IF NOT EXISTS message_events_session_v8"
    " ON message_events(session_id)",
)


def _to_v7(conn: sqlite3.Connection) -> None:
    """Accounts that can be revoked: ``users.status`` and
    ``users.tokens_valid_after_ms``, and ``invites``."""
    columns = _columns(conn, "users")
    if "status" not in columns:
        conn.execute(
            "ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'active'"
        )
    if "tokens_valid_after_ms" not in columns:
        conn.execute("ALTER TABLE users ADD COLUMN tokens_valid_after_ms INTEGER")
    conn.execute(_USERS_REVOKED_INDEX)
    conn.execute(_INVITES)


def _to_v8(conn: sqlite3.Connection) -> None:
    """Rows delivered before version 8 have no delivery time: they count as
    delivered at the upgrade, so none is deleted earlier than the retention
    after it."""
    if "delivered_ns" not in _columns(conn, "messages"):
        conn.execute("ALTER TABLE messages ADD COLUMN delivered_ns INTEGER")
    conn.execute(
        "UPDATE messages SET delivered_ns = ?"
        " WHERE status = 'delivered' AND is_broadcast = 0 AND delivered_ns IS NULL",
        (time.time_ns(),),
    )
    conn.execute(STATS_DAILY)
    for ddl in _V8_INDEXES:
        conn.execute(ddl)


_STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _to_v1,
    2: _to_v2,
    3: _to_v3,
    4: _to_v4,
    5: _to_v5,
    6: _to_v6,
    7: _to_v7,
    8: _to_v8,
}
