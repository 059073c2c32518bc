"""``port-db``: the original server's database into PostgreSQL, row for row."""

from __future__ import annotations

import argparse
import os
import sqlite3

import psycopg

from dkserver.admin import port_db
from dkserver.admin.tables import TABLES
from dkserver.store.pg_schema import LOCAL_TABLES
from tests.admin.portdb import (
    copy_fixture,
    file_digest,
    migrated_copy,
    pg_columns,
    pg_count,
    pg_rows,
    run_port,
    sqlite_rows,
)

#: Rows per table in tests/fixtures/original-server.db.
FIXTURE_COUNTS = {
    "users": 3,
    "messages": 3,
    "broadcast_deliveries": 0,
    "sessions": 2,
    "message_events": 3,
    "user_descriptions": 1,
    "user_trackers": 0,
    "user_apis": 0,
}


def test_original_server_database_ported_byte_exact(tmp_path, pg_empty_url, capsys):
    db = copy_fixture(tmp_path)
    before = file_digest(db)
    files_before = sorted(os.listdir(tmp_path))

    result = run_port(capsys, str(db), pg_empty_url)

    assert result.rc == 0, result.err
    assert result.err == ""
    for table, count in FIXTURE_COUNTS.items():
        assert (
            f"{table}: {count} rows to copy, 0 already in PostgreSQL, {count} copied"
            in result.out
        )
        assert f"verify {table}: {count} rows" in result.out
    assert "holds a verified copy" in result.out
    # the operator's file is untouched, and nothing was left beside it
    assert file_digest(db) == before
    assert sorted(os.listdir(tmp_path)) == files_before

    with psycopg.connect(pg_empty_url) as pg, migrated_copy(db, tmp_path) as expected:
        for table in FIXTURE_COUNTS:
            columns = pg_columns(pg, table)
            assert pg_rows(pg, table, columns) == sqlite_rows(expected, table, columns)
        # the original's columns, straight from its file: the same text
        original = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        try:
            for table, columns in {
                "users": ["user_id", "username", "public_key", "created_at"],
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
                ],
                "sessions": [
                    "session_id",
                    "user_id",
                    "start_time",
                    "end_time",
                    "duration",
                ],
                "message_events": [
                    "id",
                    "session_id",
                    "user_id",
                    "is_broadcast",
                    "timestamp",
                ],
                "user_descriptions": ["user_id", "descriptions"],
            }.items():
                assert pg_rows(pg, table, columns) == sqlite_rows(
                    original, table, columns
                )
        finally:
            original.close()
        stamps = [
            r[0] for r in pg.execute("SELECT timestamp FROM messages ORDER BY id")
        ]
        assert stamps[0] == "2026-11-26 01:45:42.123456789-03:00"
        # ids are kept and new ones come after them
        assert (
            pg.execute(
                "SELECT nextval(pg_get_serial_sequence('messages', 'id'))"
            ).fetchone()[0]
            == 4
        )
        assert (
            pg.execute(
                "SELECT nextval(pg_get_serial_sequence('message_events', 'id'))"
            ).fetchone()[0]
            == 4
        )


def test_second_run_copies_nothing_twice(tmp_path, pg_empty_url, capsys):
    db = copy_fixture(tmp_path)
    assert run_port(capsys, str(db), pg_empty_url).rc == 0

    # (a chunk larger than SQLite's limit of variables in one statement)
    again = run_port(capsys, str(db), pg_empty_url, "--chunk-size", "100000")

    assert again.rc == 0, again.err
    for table, count in FIXTURE_COUNTS.items():
        assert (
            f"{table}: {count} rows to copy, {count} already in PostgreSQL, 0 copied"
            in again.out
        )
        assert pg_count(pg_empty_url, table) == count


def test_rows_added_to_the_source_after_a_port_are_copied_on_the_next(
    tmp_path, pg_empty_url, capsys
):
    db = copy_fixture(tmp_path)
    assert run_port(capsys, str(db), pg_empty_url).rc == 0
    with migrated_copy(db, tmp_path) as conn:  # what dkserver would have written
        conn.execute(
            "INSERT INTO messages (id, from_user, to_user, timestamp, content,"
            " status, is_broadcast, received_ns) VALUES"
            " (9, 'bob', 'alice', '2026-12-01 10:00:00.5+01:00', 'x', 'pending', 0, 1)"
        )
        conn.commit()
    os.replace(tmp_path / "expected-dk.db", db)

    result = run_port(capsys, str(db), pg_empty_url)

    assert result.rc == 0, result.err
    assert "messages: 4 rows to copy, 3 already in PostgreSQL, 1 copied" in result.out
    with psycopg.connect(pg_empty_url) as pg:
        assert pg.execute("SELECT timestamp FROM messages WHERE id = 9").fetchone() == (
            "2026-12-01 10:00:00.5+01:00",
        )


def test_dangling_rows_are_left_out_and_counted(tmp_path, pg_empty_url, capsys):
    db = copy_fixture(tmp_path)
    conn = sqlite3.connect(db)  # the original never enforced foreign keys
    conn.execute(
        "INSERT INTO message_events (session_id, user_id, is_broadcast, timestamp)"
        " VALUES ('0xnever', 'bob', 0, '2026-11-26 01:00:00')"
    )
    conn.execute("INSERT INTO user_descriptions VALUES ('mallory', '[\"x\"]')")
    conn.execute(
        "INSERT INTO broadcast_deliveries (message_id, user_id) VALUES (77, 'bob')"
    )
    conn.commit()
    conn.close()

    result = run_port(capsys, str(db), pg_empty_url)

    assert result.rc == 0, result.err
    assert (
        "message_events: leaving out 1 source rows: session_id names no sessions row"
        in result.out
    )
    assert (
        "user_descriptions: leaving out 1 source rows: user_id names no users row"
        in result.out
    )
    assert "broadcast_deliveries: leaving out 1 source rows" in result.out
    assert pg_count(pg_empty_url, "message_events") == 3
    assert pg_count(pg_empty_url, "user_descriptions") == 1
    assert pg_count(pg_empty_url, "broadcast_deliveries") == 0
    # the sequence still moves past the left-out event's id: ids are never reused
    with psycopg.connect(pg_empty_url) as pg:
        assert (
            pg.execute(
                "SELECT nextval(pg_get_serial_sequence('message_events', 'id'))"
            ).fetchone()[0]
            == 5
        )


def test_sequence_moves_past_ids_sqlite_handed_out_before_a_delete(
    tmp_path, pg_empty_url, capsys
):
    db = copy_fixture(tmp_path)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM messages WHERE id = 3")
    conn.commit()
    conn.close()

    assert run_port(capsys, str(db), pg_empty_url).rc == 0

    with psycopg.connect(pg_empty_url) as pg:
        assert pg.execute("SELECT MAX(id) FROM messages").fetchone() == (2,)
        assert (
            pg.execute(
                "SELECT nextval(pg_get_serial_sequence('messages', 'id'))"
            ).fetchone()[0]
            == 4
        )


def test_verification_fails_when_a_row_is_deleted_from_the_target(
    tmp_path, pg_empty_url, capsys
):
    db = copy_fixture(tmp_path)
    assert run_port(capsys, str(db), pg_empty_url).rc == 0
    with psycopg.connect(pg_empty_url) as pg:
        pg.execute("DELETE FROM message_events WHERE id = 2")

    check = run_port(capsys, str(db), pg_empty_url, "--verify-only")

    assert check.rc == 1
    assert "copied" not in check.out
    assert (
        "verify message_events: MISMATCH: source 3 rows, last key 3; "
        "PostgreSQL 2 rows, last key 3; checksums differ" in check.out
    )
    assert "verify users: 3 rows" in check.out
    assert check.err.strip().splitlines() == [
        "port-db: verification failed for message_events: PostgreSQL does not "
        "hold the same rows as the source (see the lines above)"
    ]
    # and a full run does not paper over the hole
    again = run_port(capsys, str(db), pg_empty_url)
    assert again.rc == 2
    assert (
        "table message_events: it holds 2 rows up to 3 where the source has 3"
        in again.err
    )


def test_verification_fails_when_a_value_differs(tmp_path, pg_empty_url, capsys):
    db = copy_fixture(tmp_path)
    assert run_port(capsys, str(db), pg_empty_url).rc == 0
    with psycopg.connect(pg_empty_url) as pg:
        pg.execute("UPDATE messages SET timestamp = timestamp || ' ' WHERE id = 1")

    check = run_port(capsys, str(db), pg_empty_url, "--verify-only")

    assert check.rc == 1
    assert (
        "verify messages: MISMATCH: source 3 rows, last key 3; "
        "PostgreSQL 3 rows, last key 3; checksums differ" in check.out
    )


def test_refuses_a_target_whose_user_has_another_public_key(tmp_path, pg_url, capsys):
    db = copy_fixture(tmp_path)
    with psycopg.connect(pg_url) as pg:
        pg.execute(
            "INSERT INTO users (user_id, username, public_key)"
            " VALUES ('bob', 'bob', 'AAAA')"
        )

    result = run_port(capsys, str(db), pg_url)

    assert result.rc == 2
    assert result.out.count("copied") == 0
    assert result.err.strip().splitlines() == [
        "port-db: PostgreSQL already holds other data: table users: user 'bob' "
        "has a different public key; port-db fills an empty database or "
        "resumes its own copy of this source, so give it a new, empty database"
    ]
    assert pg_count(pg_url, "messages") == 0


def test_refuses_a_target_a_server_has_written_to_since(tmp_path, pg_empty_url, capsys):
    db = copy_fixture(tmp_path)
    assert run_port(capsys, str(db), pg_empty_url).rc == 0
    with psycopg.connect(pg_empty_url) as pg:
        pg.execute(
            "INSERT INTO messages (from_user, to_user, content, status)"
            " VALUES ('bob', 'alice', 'new', 'pending')"
        )

    result = run_port(capsys, str(db), pg_empty_url)

    assert result.rc == 2
    assert (
        "PostgreSQL already holds other data: table messages: "
        "its row 4 is not the source's" in result.err
    )


def test_refuses_a_target_with_a_newer_schema(tmp_path, pg_url, capsys):
    db = copy_fixture(tmp_path)
    with psycopg.connect(pg_url) as pg:
        pg.execute("INSERT INTO schema_version (version) VALUES (99)")

    result = run_port(capsys, str(db), pg_url)

    assert result.rc == 2
    assert len(result.err.strip().splitlines()) == 1
    assert (
        "database schema version 99 is newer than this dkserver supports" in result.err
    )


def test_every_table_is_ported(tmp_path, pg_empty_url, capsys):
    """Guards TABLES against a table added to the schema and not to port-db."""
    db = copy_fixture(tmp_path)
    result = run_port(capsys, str(db), pg_empty_url)
    assert result.rc == 0
    with psycopg.connect(pg_empty_url) as pg:
        tables = {
            name
            for (name,) in pg.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
        }
    # server_settings holds this database's own settings (the nodes' JWT
    # secret): never copied, a SQLite deployment keeps its secret in a file.
    assert tables - {"schema_version", *LOCAL_TABLES} == {t.name for t in TABLES}


def test_refuses_a_target_with_tables_of_another_program(
    tmp_path, pg_empty_url, capsys
):
    db = copy_fixture(tmp_path)
    with psycopg.connect(pg_empty_url) as pg:
        pg.execute("CREATE TABLE users (name TEXT)")

    result = run_port(capsys, str(db), pg_empty_url)

    assert result.rc == 2
    assert len(result.err.strip().splitlines()) == 1
    assert "already has tables named users but no dkserver schema_version" in (
        result.err
    )


def test_add_parser_mounts_port_db_as_a_subcommand(tmp_path, pg_empty_url, capsys):
    """How the ``dkserver`` console command wires it in."""
    parser = argparse.ArgumentParser(prog="dkserver")
    port_db.add_parser(parser.add_subparsers(dest="command", required=True))
    db = copy_fixture(tmp_path)

    args = parser.parse_args(["port-db", str(db), pg_empty_url, "--chunk-size", "2"])

    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert "messages: 3 rows to copy, 0 already in PostgreSQL, 3 copied" in out
    assert pg_count(pg_empty_url, "messages") == 3


def test_a_row_postgresql_rejects_stops_the_copy_with_one_line(
    tmp_path, pg_empty_url, capsys
):
    db = copy_fixture(tmp_path)
    conn = sqlite3.connect(db)  # SQLite's BOOLEAN takes anything
    conn.execute("UPDATE message_events SET is_broadcast = 5 WHERE id = 3")
    conn.commit()
    conn.close()

    result = run_port(capsys, str(db), pg_empty_url, "--chunk-size", "1")

    assert result.rc == 1
    assert "verify" not in result.out
    [line] = result.err.strip().splitlines()
    assert line.startswith(
        "port-db: copying message_events stopped after 2 new rows (at the chunk "
        'after 2): new row for relation "message_events" violates check constraint'
    )
    assert line.endswith("running port-db again resumes from them")
    assert pg_count(pg_empty_url, "message_events") == 2
