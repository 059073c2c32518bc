"""``port-db`` on bad input: one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import sqlite3

import pytest

from tests.admin.portdb import copy_fixture, run_port, run_port_process

UNREACHABLE = "postgresql://dk:s3cret-pw@127.0.0.1:1/dk"


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("port-db: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def fixture_db(tmp_path):
    return copy_fixture(tmp_path)


def test_missing_file(tmp_path, capsys):
    result = run_port(capsys, str(tmp_path / "nope.db"), UNREACHABLE)
    assert result.rc == 2
    assert (
        _one_line(result.err)
        == f"port-db: SQLITE_PATH {tmp_path}/nope.db does not exist"
    )


def test_directory_instead_of_file(tmp_path, capsys):
    result = run_port(capsys, str(tmp_path), UNREACHABLE)
    assert result.rc == 2
    assert _one_line(result.err) == f"port-db: SQLITE_PATH {tmp_path} is not a file"


def test_file_that_is_not_sqlite(tmp_path, capsys):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the pages you are looking for\n" * 100)
    result = run_port(capsys, str(path), UNREACHABLE)
    assert result.rc == 2
    assert "is not a usable SQLite database: file is not a database" in _one_line(
        result.err
    )


def test_sqlite_file_of_another_program(tmp_path, capsys):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    result = run_port(capsys, str(path), UNREACHABLE)
    assert result.rc == 2
    assert _one_line(result.err) == (
        f"port-db: {path} has no users or messages table: not a dkserver or "
        "DistributedKnowledge database"
    )


def test_newer_schema(fixture_db, capsys):
    conn = sqlite3.connect(fixture_db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    result = run_port(capsys, str(fixture_db), UNREACHABLE)
    assert result.rc == 2
    assert "database schema version 99 is newer than this dkserver supports" in (
        _one_line(result.err)
    )


def test_source_that_cannot_be_migrated(fixture_db, pg_empty_url, capsys):
    conn = sqlite3.connect(fixture_db)  # a message from nobody: migration refuses
    conn.execute("UPDATE messages SET from_user = 'ghost' WHERE id = 2")
    conn.commit()
    conn.close()
    result = run_port(capsys, str(fixture_db), pg_empty_url)
    assert result.rc == 2
    line = _one_line(result.err)
    assert "cannot be brought to dkserver's schema (tried on a copy" in line
    assert "messages rows whose from_user is not a registered user" in line


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://dk@127.0.0.1:5432/", "names no database"),
        ("postgresql://dk@127.0.0.1:99999/dk", "bad port"),
        ("postgresql://dk@127.0.0.1/dk?sslmod=require", "unknown option 'sslmod'"),
        ("mysql://dk@127.0.0.1/dk", "unsupported database URL scheme 'mysql'"),
        ("/var/lib/dk.db", "must be a postgresql://user@host:port/dbname URL"),
    ],
)
def test_bad_postgres_url(fixture_db, capsys, url, message):
    result = run_port(capsys, str(fixture_db), url)
    assert result.rc == 2
    line = _one_line(result.err)
    assert line.startswith("port-db: POSTGRES_URL ")
    assert message in line


def test_postgres_url_given_as_sqlite_path(capsys):
    result = run_port(capsys, "postgresql://dk@127.0.0.1/dk", UNREACHABLE)
    assert result.rc == 2
    assert _one_line(result.err) == (
        "port-db: SQLITE_PATH must be a SQLite file, not a postgresql:// URL"
    )


def test_unreachable_server_without_traceback_or_password(fixture_db):
    result = run_port_process(str(fixture_db), UNREACHABLE)
    assert result.rc == 2
    line = _one_line(result.err)
    assert line.startswith(
        "port-db: PostgreSQL at postgresql://dk:***@127.0.0.1:1/dk: "
    )
    assert "s3cret-pw" not in result.err + result.out


def test_wrong_password(fixture_db, pg_server, pg_empty_url):
    url = pg_empty_url.replace(f":{pg_server.password}@", ":wrong@")
    assert url != pg_empty_url
    result = run_port_process(str(fixture_db), url)
    assert result.rc == 2
    assert "password authentication failed" in _one_line(result.err)


def test_chunk_size_must_be_positive(fixture_db, capsys):
    result = run_port(capsys, str(fixture_db), UNREACHABLE, "--chunk-size", "0")
    assert result.rc == 2
    assert "--chunk-size: must be at least 1" in result.err
    assert "Traceback" not in result.err
