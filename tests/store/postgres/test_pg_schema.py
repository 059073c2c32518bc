"""The PostgreSQL schema and its migrations, on the private test server."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import uuid

import psycopg
import pytest
import pytest_twisted
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from twisted.enterprise import adbapi
from twisted.internet import reactor

from dkserver.store import pg_schema, schema
from dkserver.store.errors import DatabaseUnusable
from dkserver.store.url import parse_database_url
from tests.support import postgres

EXPECTED_COLUMNS = {
    "users": [
        "user_id",
        "username",
        "public_key",
        "created_at",
        "registered_ns",
        "broadcast_floor",
        "status",
        "tokens_valid_after_ms",
    ],
    "messages": [
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
    ],
    "broadcast_deliveries": ["message_id", "user_id", "delivered_at"],
    "sessions": [
        "session_id",
        "user_id",
        "start_time",
        "end_time",
        "duration",
        "node_id",
    ],
    "message_events": ["id", "session_id", "user_id", "is_broadcast", "timestamp"],
    "user_descriptions": ["user_id", "descriptions"],
    "user_trackers": [
        "id",
        "user_id",
        "tracker_name",
        "tracker_description",
        "tracker_version",
        "tracker_documents",
        "created_at",
        "updated_at",
    ],
    "user_apis": [
        "id",
        "user_id",
        "api_name",
        "documents",
        "policy",
        "created_at",
        "updated_at",
    ],
    "server_settings": ["name", "value"],
    "invites": ["code_hash", "uses_left", "expires_ms", "created_ms", "revoked"],
    "stats_daily": ["day", "metric", "bucket", "count"],
}

#: Every version a fresh database records: the baseline, then each step.
APPLIED_VERSIONS = list(range(pg_schema.BASELINE_VERSION, pg_schema.LATEST_VERSION + 1))

#: What SQLite's versions after 3 add (PostgreSQL has them from the start).
ADDED_AFTER_SQLITE_V3 = {
    ("messages", "client_timestamp"),
    ("users", "status"),
    ("users", "tokens_valid_after_ms"),
    *(("invites", c) for c in EXPECTED_COLUMNS["invites"]),
    *((t, c) for t in ("user_trackers", "user_apis") for c in EXPECTED_COLUMNS[t]),
}

ORIGINAL_TIMESTAMP = "2026-11-26 01:45:42.123456789-03:00"


def connect(url: str, **kw) -> psycopg.Connection:
    return psycopg.connect(parse_database_url(url).conninfo, **kw)


def pg_columns(conn, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
        (table,),
    )
    return [r[0] for r in rows]


def pg_tables(conn) -> set[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    ).fetchall()
    return {r[0] for r in rows}


def add_user(conn, user_id: str) -> None:
    conn.execute(
        "INSERT INTO users (user_id, username, public_key, registered_ns)"
        " VALUES (%s, %s, 'key', 0)",
        (user_id, user_id),
    )


def add_message(conn, **values) -> int:
    row = {
        "from_user": "alice",
        "to_user": "bob",
        "timestamp": ORIGINAL_TIMESTAMP,
        "content": "x",
        "status": "pending",
        "is_broadcast": 0,
        "signature": "",
        "is_forward_message": 0,
        "received_ns": 1,
    } | values
    names = ", ".join(row)
    marks = ", ".join(["%s"] * len(row))
    return conn.execute(
        f"INSERT INTO messages ({names}) VALUES ({marks}) RETURNING id",
        tuple(row.values()),
    ).fetchone()[0]


def test_empty_database_migrates_to_latest_with_every_table(pg_empty_url):
    with connect(pg_empty_url) as conn:
        assert pg_schema.current_version(conn) == 0
        conn.commit()
        assert pg_schema.migrate_connection(conn) == 0
        assert pg_schema.current_version(conn) == pg_schema.LATEST_VERSION
        assert pg_tables(conn) == {*EXPECTED_COLUMNS, "schema_version"}
        for table, columns in EXPECTED_COLUMNS.items():
            assert pg_columns(conn, table) == columns, table
        versions = conn.execute(
            "SELECT version, applied_at FROM schema_version ORDER BY version"
        ).fetchall()
        assert [version for version, _ in versions] == APPLIED_VERSIONS
        for _, applied_at in versions:
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", applied_at)


def test_second_migration_finds_latest_and_changes_nothing(pg_url):
    with connect(pg_url) as conn:
        before = conn.execute("SELECT * FROM schema_version").fetchall()
        conn.commit()
        assert pg_schema.migrate_connection(conn) == pg_schema.LATEST_VERSION
        assert conn.execute("SELECT * FROM schema_version").fetchall() == before


def test_column_names_match_the_sqlite_schema(pg_url, tmp_path):
    """Same tables and columns, in the same order, as a fresh SQLite file;
    while SQLite is still below version 5, PostgreSQL may only add the
    version 4/5 columns and tables."""
    path = tmp_path / "dk.db"
    lite = sqlite3.connect(path)
    try:
        schema.migrate_connection(lite)
        sqlite_tables = {
            name
            for (name,) in lite.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name NOT LIKE 'sqlite_%'"
            )
        }
        sqlite_cols = {
            t: [r[1] for r in lite.execute(f"PRAGMA table_info({t})")]
            for t in sqlite_tables
        }
    finally:
        lite.close()
    with connect(pg_url) as conn:
        pg_cols = {t: pg_columns(conn, t) for t in EXPECTED_COLUMNS}
    for table, columns in pg_cols.items():
        expected = sqlite_cols.get(table, [])
        if schema.LATEST_VERSION < pg_schema.LATEST_VERSION:
            columns = [c for c in columns if (table, c) not in ADDED_AFTER_SQLITE_V3]
        assert columns == expected, table
    assert sqlite_tables <= set(pg_cols)


def test_concurrent_migrators_migrate_once(pg_empty_url):
    """Six nodes starting at once: one migrates, the others wait on the
    advisory lock and find the schema done."""
    count = 6
    barrier = threading.Barrier(count)
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def node() -> None:
        try:
            with connect(pg_empty_url, connect_timeout=10) as conn:
                barrier.wait(timeout=30)
                found = pg_schema.migrate_connection(conn)
            with lock:
                results.append(found)
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=node) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(results) == [0] + [pg_schema.LATEST_VERSION] * (count - 1)
    with connect(pg_empty_url) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version")
        assert [version for (version,) in rows] == APPLIED_VERSIONS


def test_newer_schema_version_is_refused(pg_url):
    with connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO schema_version (version) VALUES (%s)",
            (pg_schema.LATEST_VERSION + 1,),
        )
        conn.commit()
        with pytest.raises(DatabaseUnusable, match="newer than this dkserver"):
            pg_schema.migrate_connection(conn)


def test_migration_refuses_a_connection_inside_a_transaction(pg_url):
    with connect(pg_url) as conn:
        conn.execute("SELECT 1")  # psycopg opened a transaction
        with pytest.raises(pg_schema.StoreError, match="no open work"):
            pg_schema.migrate_connection(conn)


@pytest_twisted.ensureDeferred
async def test_migrate_runs_through_an_adbapi_pool(pg_empty_url):
    pool = adbapi.ConnectionPool(
        "psycopg",
        parse_database_url(pg_empty_url).conninfo,
        cp_min=1,
        cp_max=1,
        cp_reactor=reactor,
    )
    try:
        assert await pg_schema.migrate(pool) == 0
        assert await pg_schema.migrate(pool) == pg_schema.LATEST_VERSION
    finally:
        pool.close()


def test_timestamps_come_back_byte_exact(pg_url):
    with connect(pg_url) as conn:
        add_user(conn, "alice")
        mid = add_message(
            conn,
            timestamp=ORIGINAL_TIMESTAMP,
            client_timestamp="2026-11-26T01:45:42.1Z",
        )
        row = conn.execute(
            "SELECT timestamp, client_timestamp FROM messages WHERE id = %s", (mid,)
        ).fetchone()
    assert row == (ORIGINAL_TIMESTAMP, "2026-11-26T01:45:42.1Z")


def test_defaults_write_what_sqlite_current_timestamp_writes(pg_url):
    sqlite_now = sqlite3.connect(":memory:").execute("SELECT CURRENT_TIMESTAMP")
    shape = re.sub(r"\d", r"\\d", sqlite_now.fetchone()[0])
    with connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO users (user_id, username, public_key) VALUES ('a', 'a', 'k')"
        )
        created = conn.execute("SELECT created_at FROM users").fetchone()[0]
        mid = conn.execute(
            "INSERT INTO messages (from_user, to_user, content, status)"
            " VALUES ('a', 'b', 'x', 'pending') RETURNING id"
        ).fetchone()[0]
        message = conn.execute(
            "SELECT timestamp, is_broadcast, is_forward_message FROM messages"
            " WHERE id = %s",
            (mid,),
        ).fetchone()
    assert re.fullmatch(shape, created)
    assert re.fullmatch(shape, message[0])
    assert message[1:] == (0, 0)


def test_flags_are_zero_or_one(pg_url):
    with connect(pg_url) as conn:
        add_user(conn, "alice")
        with pytest.raises(psycopg.errors.CheckViolation):
            add_message(conn, is_broadcast=2)


def test_sender_must_be_a_user_but_recipient_broadcast_needs_none(pg_url):
    with connect(pg_url) as conn:
        add_user(conn, "alice")
        add_message(conn, to_user="broadcast", is_broadcast=1)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            add_message(conn, from_user="mallory")


def test_one_tracker_and_one_api_per_name_and_user(pg_url):
    with connect(pg_url) as conn:
        add_user(conn, "alice")
        add_user(conn, "bob")
        insert = "INSERT INTO user_trackers (user_id, tracker_name) VALUES (%s, %s)"
        conn.execute(insert, ("alice", "t"))
        conn.execute(insert, ("bob", "t"))
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute(insert, ("alice", "t"))
        insert = "INSERT INTO user_apis (user_id, api_name) VALUES (%s, %s)"
        conn.execute(insert, ("alice", "a"))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("alice", "a"))


def test_text_sorts_by_bytes_like_sqlite_in_a_natural_language_database(
    pg_server,
):
    """Production databases sort text by a language's rules by default
    (``Bob`` next to ``bob``); dkserver's columns sort by bytes, as SQLite."""
    names = ["bob", "Bob", "alice", "Zoë", "zed", "_x"]
    dbname = pg_server.create_database(migrated=False, icu_locale="en-US")
    try:
        with pg_server.connect(dbname) as conn:
            pg_schema.migrate_connection(conn)
            for name in names:
                add_user(conn, name)
            rows = conn.execute("SELECT user_id FROM users ORDER BY user_id")
            by_column = [r[0] for r in rows]
            rows = conn.execute(
                'SELECT user_id FROM users ORDER BY user_id::text COLLATE "default"'
            )
            by_database_default = [r[0] for r in rows]
    finally:
        pg_server.drop_database(dbname)
    assert by_column == sorted(names, key=lambda s: s.encode())
    assert by_database_default != by_column  # the check above can fail


def test_explicit_ids_then_reset_sequences_continue_after_the_highest(pg_url):
    with connect(pg_url) as conn:
        add_user(conn, "alice")
        add_message(conn, id=41)
        add_message(conn, id=7)
        conn.execute(
            "INSERT INTO sessions (session_id, user_id, start_time)"
            " VALUES ('s', 'a', 't')"
        )
        conn.execute(
            "INSERT INTO message_events (id, session_id, user_id, is_broadcast)"
            " VALUES (900, 's', 'alice', 0)"
        )
        assert pg_schema.reset_sequences(conn) == {
            "messages": 42,
            "message_events": 901,
            "user_trackers": 1,
            "user_apis": 1,
        }
        assert add_message(conn) == 42
        assert add_message(conn) == 43
        # running it again (a resumed port) changes nothing
        assert pg_schema.reset_sequences(conn)["messages"] == 44
        assert add_message(conn) == 44


def test_queries_use_the_partial_indexes(pg_url):
    with connect(pg_url) as conn:
        add_user(conn, "alice")
        for i in range(200):
            add_message(conn, to_user=f"user{i % 20}", status="delivered")
        add_message(conn, to_user="user1")
        add_message(conn, to_user="broadcast", is_broadcast=1)
        conn.execute("ANALYZE messages")
        conn.execute("SET enable_seqscan = off")

        def plan(query: str, *params) -> str:
            rows = conn.execute("EXPLAIN " + query, params).fetchall()
            return "\n".join(r[0] for r in rows)

        pending = plan(
            "SELECT id FROM messages WHERE to_user = %s AND status = 'pending'"
            " ORDER BY id",
            "user1",
        )
        assert "messages_pending_v2" in pending
        broadcasts = plan(
            "SELECT id FROM messages WHERE is_broadcast = 1 AND id > %s ORDER BY id", 0
        )
        assert "messages_broadcast_v2" in broadcasts
        index_sql = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE tablename = 'messages'"
            ).fetchall()
        )
    assert "WHERE (status = 'pending'" in index_sql["messages_pending_v2"]
    assert "WHERE (is_broadcast = 1)" in index_sql["messages_broadcast_v2"]


def test_database_with_foreign_tables_of_the_same_names_is_refused(pg_empty_url):
    with connect(pg_empty_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id serial PRIMARY KEY, email text)")
        conn.execute("CREATE TABLE sessions (token text)")
        with pytest.raises(DatabaseUnusable, match="tables named sessions, users"):
            pg_schema.migrate_connection(conn)
        assert pg_tables(conn) == {"users", "sessions"}  # nothing was added


@pytest.fixture
def app_role(pg_server):
    """A role that may connect but owns nothing (as dkserver often runs).

    Ask for it before the database fixture: a role with rights in a
    database cannot be dropped before that database is.
    """
    if os.environ.get(postgres.ENV_URL):
        pytest.skip(f"creates a role; not on the {postgres.ENV_URL} server")
    name, password = f"dk_app_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with pg_server.connect(autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    yield name, password
    with pg_server.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(url: str, role: tuple[str, str]) -> psycopg.Connection:
    info = conninfo_to_dict(parse_database_url(url).conninfo)
    info["user"], info["password"] = role
    return psycopg.connect(**info)


def test_role_without_create_rights_gets_a_clear_refusal(app_role, pg_empty_url):
    with as_role(pg_empty_url, app_role) as conn:
        with pytest.raises(DatabaseUnusable, match="lacks rights dkserver needs"):
            pg_schema.migrate_connection(conn)
        assert pg_tables(conn) == set()


def test_role_without_create_rights_starts_on_a_migrated_database(app_role, pg_url):
    """The owner migrated and granted table rights: no DDL, no error."""
    with connect(pg_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE"
                " ON ALL TABLES IN SCHEMA public TO {}"
            ).format(sql.Identifier(app_role[0]))
        )
    with as_role(pg_url, app_role) as conn:
        assert pg_schema.migrate_connection(conn) == pg_schema.LATEST_VERSION
