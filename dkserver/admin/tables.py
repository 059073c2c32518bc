"""What ``port-db`` copies: each table, its key, and which rows PostgreSQL takes.

The order is a foreign-key order (parents first), and the key orders the
copy: rows go over in key order, a chunk per transaction, so PostgreSQL
always holds a prefix of the source and a rerun resumes after the highest
key already there.  SQLite's BINARY collation and the schema's
``COLLATE "C"`` both order text by bytes, so the two sides agree on "after".

``portable`` is a SQLite condition on ``t``: PostgreSQL enforces the foreign
keys the original server declared but never enforced, so a row pointing at
nothing (an event of a session that was never written) cannot go over.
Such rows are left out, counted and named in the output, never dropped
silently; a SQLite primary key may also be NULL, which PostgreSQL refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from dkserver.store import pg_schema

_USER_EXISTS = "EXISTS (SELECT 1 FROM users u WHERE u.user_id = t.user_id)"


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]
    portable: str
    #: Why a row fails ``portable``, for the output.
    skipped_because: str


TABLES = (
    Table("users", ("user_id",), "t.user_id IS NOT NULL", "user_id is NULL"),
    Table(
        "messages",
        ("id",),
        "EXISTS (SELECT 1 FROM users u WHERE u.user_id = t.from_user)",
        "from_user names no users row",
    ),
    Table(
        "broadcast_deliveries",
        ("message_id", "user_id"),
        "t.user_id IS NOT NULL AND EXISTS (SELECT 1 FROM messages m"
        " WHERE m.id = t.message_id"
        " AND EXISTS (SELECT 1 FROM users u WHERE u.user_id = m.from_user))",
        "message_id names no copied messages row, or user_id is NULL",
    ),
    Table(
        "sessions", ("session_id",), "t.session_id IS NOT NULL", "session_id is NULL"
    ),
    Table(
        "message_events",
        ("id",),
        "EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = t.session_id)",
        "session_id names no sessions row",
    ),
    Table(
        "user_descriptions", ("user_id",), _USER_EXISTS, "user_id names no users row"
    ),
    Table("user_trackers", ("id",), _USER_EXISTS, "user_id names no users row"),
    Table("user_apis", ("id",), _USER_EXISTS, "user_id names no users row"),
    Table("stats_daily", ("day", "metric", "bucket"), "1 = 1", "never"),
)

assert tuple(t.name for t in TABLES) == pg_schema.TABLES, "port-db misses a table"
