"""Schema creation and migrations."""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor

from dkserver.store import DatabaseUnusable, NewMessage, Store, StoreError, preflight
from dkserver.store.pool import open_pool
from dkserver.store.schema import LATEST_VERSION

#: About SQLite's own schema and migrations (PostgreSQL's: tests/store/postgres).
pytestmark = pytest.mark.sqlite_only

TABLES = {
    "users",
    "messages",
    "broadcast_deliveries",
    "sessions",
    "message_events",
    "user_descriptions",
}


def columns(path: str, table: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    finally:
        conn.close()


def schema_dump(path: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_fresh_file_gets_full_schema_at_latest_version(db_path, sql):
    store = await Store.open(db_path, reactor)
    await store.close()
    tables = {
        n for (n,) in sql(db_path, "SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert TABLES <= tables
    assert {"user_trackers", "user_apis"} <= tables
    assert sql(db_path, "PRAGMA user_version") == [(LATEST_VERSION,)]
    assert sql(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert columns(db_path, "messages") == [
        "id",
        "from_user",
        "to_user",
        "timestamp",
        "content",
        "status",
        "is_broadcast",
        "signature",
        "is_forward_message",
        "received_ns",
        "client_timestamp",
        "delivered_ns",
    ]
    assert columns(db_path, "users") == [
        "user_id",
        "username",
        "public_key",
        "created_at",
        "registered_ns",
        "broadcast_floor",
        "status",
        "tokens_valid_after_ms",
    ]
    fks = sql(db_path, "PRAGMA foreign_key_list(messages)")
    assert [(r[2], r[3], r[4]) for r in fks] == [("users", "from_user", "user_id")]
    indexes = {
        n for (n,) in sql(db_path, "SELECT name FROM sqlite_master WHERE type='index'")
    }
    assert {
        "messages_pending_v2",
        "messages_broadcast_v2",
        "sessions_user_start_idx",
        "messages_delivered_v8",
        "sessions_end_v8",
        "message_events_session_v8",
    } <= indexes
    # Version 2 replaced the v1 indexes with partial ones.
    assert not {"messages_pending_idx", "message_events_timestamp_idx"} & indexes


def test_queries_use_the_partial_indexes(db_path):
    import sqlite3

    from dkserver.store import schema

    con = sqlite3.connect(db_path)
    schema.migrate_connection(con)
    plan = con.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM messages m WHERE m.to_user = ?"
        " AND m.status = 'pending' AND m.id > ? ORDER BY m.id",
        ("bob", 0),
    ).fetchall()
    assert "messages_pending_v2" in str(plan)
    plan = con.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM messages m WHERE m.is_broadcast = 1"
        " AND m.id > ? ORDER BY m.id",
        (0,),
    ).fetchall()
    assert "messages_broadcast_v2" in str(plan)


@pytest_twisted.ensureDeferred
async def test_reopening_runs_no_migration_and_keeps_data(db_path, sql):
    store = await Store.open(db_path, reactor)
    await store.users.create("alice", "Alice", "key")
    await store.close()
    before = schema_dump(db_path)

    store = await Store.open(db_path, reactor)
    try:
        assert await store.users.all_ids() == ["alice"]
    finally:
        await store.close()
    assert schema_dump(db_path) == before
    assert sql(db_path, "PRAGMA user_version") == [(LATEST_VERSION,)]


@pytest_twisted.ensureDeferred
async def test_newer_schema_version_is_refused(db_path, sql):
    sql(db_path, f"PRAGMA user_version={LATEST_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this dkserver supports"):
        await Store.open(db_path, reactor)
    assert sql(db_path, "PRAGMA user_version") == [(LATEST_VERSION + 1,)]
    assert sql(db_path, "SELECT name FROM sqlite_master") == []


@pytest_twisted.ensureDeferred
async def test_connection_pragmas(db_path):
    pool = open_pool(db_path, reactor, synchronous="full")
    try:

        def read(conn):
            return tuple(
                conn.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("foreign_keys", "synchronous", "busy_timeout", "journal_mode")
            )

        assert await pool.runWithConnection(read) == (1, 2, 5000, "wal")
    finally:
        pool.close()

    store = await Store.open(db_path, reactor)
    try:
        fk, sync = await store._pool.runWithConnection(
            lambda c: (
                c.execute("PRAGMA foreign_keys").fetchone()[0],
                c.execute("PRAGMA synchronous").fetchone()[0],
            )
        )
        assert (fk, sync) == (1, 1)  # foreign keys back on after migrating
    finally:
        await store.close()


@pytest.mark.parametrize("mode", ["OFF", "normal; DROP TABLE users", "", 1])
def test_unknown_synchronous_mode_is_rejected(db_path, mode):
    with pytest.raises(ValueError, match="synchronous"):
        open_pool(db_path, reactor, synchronous=mode)


LEGACY_USERS = """CREATE TABLE users (user_id TEXT PRIMARY KEY, username TEXT NOT NULL,
    public_key TEXT NOT NULL, created_at DATETIME DEFAULT CURRENT_TIMESTAMP)"""
LEGACY_MESSAGES_OLD = """CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, from_user TEXT NOT NULL,
    to_user TEXT NOT NULL, timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    content TEXT NOT NULL, status TEXT NOT NULL,
    FOREIGN KEY(from_user) REFERENCES users(user_id),
    FOREIGN KEY(to_user) REFERENCES users(user_id))"""


def make_legacy(path: str, *statements: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(LEGACY_USERS)
        conn.execute(LEGACY_MESSAGES_OLD)
        for s in statements:
            conn.execute(s)
        conn.commit()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_older_legacy_messages_without_later_columns_upgrade(db_path):
    make_legacy(
        db_path,
        "INSERT INTO users VALUES ('a', 'A', 'k', '2026-01-01 00:00:00')",
        "INSERT INTO messages VALUES (7, 'a', 'a', '2026-01-01 00:00:01.5-03:00',"
        " 'hi', 'pending')",
        "INSERT INTO messages VALUES (9, 'a', 'a', 'not a time', 'x', 'delivered')",
        "DELETE FROM messages WHERE id = 9",
        "UPDATE sqlite_sequence SET seq = 41 WHERE name = 'messages'",
    )
    store = await Store.open(db_path, reactor)
    try:
        (m,) = await store.messages.pending_direct("a")
        assert (m.id, m.timestamp, m.signature, m.is_broadcast) == (
            7,
            "2026-01-01T00:00:01.5-03:00",
            None,
            False,
        )
        user = await store.users.get("a")
        assert user.registered_ns == 1767225600 * 10**9
        (new_id,) = await store.messages.add_many([_msg("a", "a")])
        assert new_id == 42  # sqlite_sequence survived the rebuild
        received = await store._pool.runInteraction(
            lambda t: t.execute(
                "SELECT received_ns FROM messages WHERE id = 7"
            ).fetchall()
        )
        assert received == [((1767225600 + 3 * 3600 + 1) * 10**9 + 500_000_000,)]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_failed_migration_changes_nothing(db_path, sql):
    make_legacy(
        db_path,
        "INSERT INTO messages VALUES (1, 'ghost', 'broadcast', '2026-01-01 00:00:00',"
        " 'boo', 'pending')",
    )
    before = schema_dump(db_path)
    with pytest.raises(StoreError, match="from_user is not a registered user"):
        await Store.open(db_path, reactor)
    assert schema_dump(db_path) == before
    assert sql(db_path, "PRAGMA user_version") == [(0,)]
    assert sql(db_path, "SELECT id, from_user FROM messages") == [(1, "ghost")]


def _msg(sender: str, to: str) -> NewMessage:
    return NewMessage(
        from_user=sender,
        to_user=to,
        timestamp="2026-01-02T00:00:00Z",
        content="c",
        is_broadcast=to == "broadcast",
        signature=None,
        is_forward_message=False,
        received_ns=1767312000 * 10**9,
    )


@pytest_twisted.ensureDeferred
async def test_create_then_migrate_and_close_twice(db_path, sql):
    store = Store.create(db_path, reactor)
    try:
        assert await store.migrate() == 0
        assert await store.migrate() == LATEST_VERSION
        await store.users.create("alice", "Alice", "a2V5")
    finally:
        await store.close()
        await store.close()
    assert sql(db_path, "SELECT user_id FROM users") == [("alice",)]


def test_preflight_accepts_new_and_current_files(db_path, tmp_path, sql):
    preflight(db_path)  # does not exist yet: fine, and not created
    assert not (tmp_path / "dk.db").exists()
    sql(db_path, f"PRAGMA user_version={LATEST_VERSION}")
    preflight(db_path)


def test_preflight_rejects_unusable_paths(tmp_path, sql):
    with pytest.raises(OSError, match="does not exist"):
        preflight(str(tmp_path / "missing" / "dk.db"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseUnusable, match="not a usable SQLite database"):
        preflight(str(junk))
    newer = str(tmp_path / "newer.db")
    sql(newer, f"PRAGMA user_version={LATEST_VERSION + 1}")
    with pytest.raises(ValueError, match="newer than this dkserver supports"):
        preflight(newer)


def test_version_1_database_upgrades_to_partial_indexes(db_path):
    import sqlite3

    from dkserver.store import schema

    con = sqlite3.connect(db_path)
    schema.migrate_connection(con)
    # Make it look like a database left by a version-1 dkserver.
    for name in ("messages_pending_v2", "messages_broadcast_v2"):
        con.execute(f"DROP INDEX {name}")
    con.execute("CREATE INDEX messages_pending_idx ON messages(to_user, status, id)")
    con.execute("PRAGMA user_version=1")
    con.commit()
    assert schema.migrate_connection(con) == 1
    names = {
        n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type='index'")
    }
    assert "messages_pending_v2" in names and "messages_pending_idx" not in names
    assert con.execute("PRAGMA user_version").fetchone() == (schema.LATEST_VERSION,)
