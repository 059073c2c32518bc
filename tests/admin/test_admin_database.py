"""How every admin command finds and refuses a database (dkserver/admin/
context.py), through ``user list``: one stderr line, no traceback, exit 2
for what is configured wrong, 1 for a database that fails; nothing created
or migrated."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest

from dkserver.store import pg_schema, schema
from tests.admin.admincli import dkserver, sqlite_database

PREFIX = "dkserver user list: "


def _refused(result, code: int) -> str:
    assert result.rc == code, result
    assert result.out == ""
    return result.one_error_line(PREFIX)[len(PREFIX) :]


def test_missing_file_is_refused_and_not_created(tmp_path):
    path = tmp_path / "typo.db"
    message = _refused(dkserver("user", "list", "--db", str(path)), 2)
    assert message == (
        f"database file {path} does not exist (DK_DB/--db; the server creates "
        "it when it first starts)"
    )
    assert not path.exists()


def test_default_database_is_dkserver_db_in_the_working_directory(tmp_path):
    message = _refused(dkserver("user", "list", cwd=tmp_path), 2)
    assert message.startswith("database file dkserver.db does not exist")
    sqlite_database(tmp_path / "dkserver.db")
    assert dkserver("user", "list", "--json", cwd=tmp_path).json()["users"] == []


def test_command_line_db_wins_over_dk_db(tmp_path):
    good = sqlite_database(tmp_path / "good.db")
    result = dkserver("user", "list", "--db", good, DK_DB=str(tmp_path / "x.db"))
    assert result.rc == 0, result


def test_a_directory_is_refused(tmp_path):
    message = _refused(dkserver("user", "list", "--db", str(tmp_path)), 2)
    assert message == f"database {tmp_path} is not a file"


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"not a database\n" * 500)
    message = _refused(dkserver("user", "list", "--db", str(path)), 2)
    assert message == f"{path} is not a usable SQLite database: file is not a database"


def test_an_empty_sqlite_file_asks_for_the_server_and_is_left_alone(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    message = _refused(dkserver("user", "list", "--db", str(path)), 2)
    assert message == (
        f"database {path} has no dkserver schema: run the server once on it "
        "to create (or upgrade) it"
    )
    conn = sqlite3.connect(path)
    assert schema.version_of(conn) == 0
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_an_older_schema_is_not_migrated(tmp_path):
    path = tmp_path / "old.db"
    sqlite_database(path)
    older = schema.LATEST_VERSION - 1
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={older}")
    conn.close()
    message = _refused(dkserver("user", "list", "--db", str(path)), 2)
    assert message == (
        f"database {path} is at schema version {older}, this dkserver needs "
        f"{schema.LATEST_VERSION}: run the server (this version) once to migrate it"
    )
    conn = sqlite3.connect(path)
    assert schema.version_of(conn) == older
    conn.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    sqlite_database(path)
    newer = schema.LATEST_VERSION + 1
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={newer}")
    conn.close()
    message = _refused(dkserver("user", "list", "--db", str(path)), 2)
    assert f"is at schema version {newer}, newer than this dkserver" in message


@pytest.mark.parametrize(
    ("db", "message"),
    [
        (
            "mysql://dk@db/dk",
            "DK_DB/--db: unsupported database URL scheme 'mysql'; use "
            "postgresql://user@host:port/dbname, sqlite:///path or a plain file path",
        ),
        ("postgresql://dk@db", "DK_DB/--db: the postgresql:// URL names no database"),
        (":memory:", "DK_DB/--db: :memory: is no database a server shares"),
    ],
)
def test_a_bad_database_setting_is_exit_2(db, message):
    assert _refused(dkserver("user", "list", "--db", db), 2).startswith(message)


def test_a_bad_connect_timeout_setting_is_exit_2(tmp_path):
    db = sqlite_database(tmp_path / "dk.db")
    result = dkserver("user", "list", "--db", db, DK_DB_CONNECT_TIMEOUT="soon")
    assert _refused(result, 2) == "DK_DB_CONNECT_TIMEOUT: not a number: 'soon'"


def test_settings_the_command_does_not_use_do_not_stop_it(tmp_path):
    db = sqlite_database(tmp_path / "dk.db")
    result = dkserver(
        "user", "list", "--db", db, DK_TRACKER_DIR=str(tmp_path / "missing")
    )
    assert result.rc == 0, result


def test_unreachable_postgresql_is_exit_1_with_the_password_masked():
    url = "postgresql://dk:s3cret-pw@127.0.0.1:1/dk"
    message = _refused(dkserver("user", "list", "--db", url), 1)
    assert message.startswith(
        "cannot connect to PostgreSQL at postgresql://dk:***@127.0.0.1:1/dk: "
    )
    assert "s3cret" not in message


def test_postgresql_without_the_schema_is_refused_and_left_empty(pg_empty_url):
    message = _refused(dkserver("user", "list", "--db", pg_empty_url), 2)
    assert message.endswith(
        "has no dkserver schema: run the server once on it to create (or upgrade) it"
    )
    with psycopg.connect(pg_empty_url) as conn:
        assert pg_schema.current_version(conn) == 0


def test_postgresql_at_a_newer_schema_is_refused(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_version (version) VALUES (%s)",
            (pg_schema.LATEST_VERSION + 1,),
        )
    message = _refused(dkserver("user", "list", "--db", pg_url), 2)
    assert f"newer than this dkserver knows ({pg_schema.LATEST_VERSION})" in message


def test_postgresql_role_without_rights_is_exit_1(pg_url, pg_server):
    """A database that fails the command (here: a role that may read the
    schema version but not the users) is an operation failure: exit 1."""
    dbname = pg_url.rpartition("/")[2]
    role = f"{dbname}_reader"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader-pw'")
        conn.execute(f"GRANT SELECT ON schema_version TO {role}")
    url = f"postgresql://{role}:reader-pw@{pg_server.host}:{pg_server.port}/{dbname}"
    try:
        message = _refused(dkserver("user", "list", "--db", url), 1)
        assert "permission denied for table users" in message
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON schema_version FROM {role}")
            conn.execute(f"DROP ROLE {role}")
