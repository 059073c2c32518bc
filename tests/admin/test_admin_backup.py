"""``dkserver backup PATH`` through the real entry point: a consistent,
verified copy while a real daemon writes (SQLite and PostgreSQL), and the
refusals (one line, exit 2 or 1, no traceback, nothing left behind)."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
import pytest_twisted

from dkserver.store import schema
from tests.admin.admincli import (
    dkserver,
    dkserver_async,
    seed,
    sqlite_database,
)
from tests.reliability.daemon import Daemon, PostgresDatabase, SqliteFile
from tests.reliability.streaming import Streamer, Traffic, open_clients
from tests.support.client import Identity
from tests.support.waiting import sleep

USERS = [("alice", "Alice", "a" * 44), ("bob", "Bob", "b" * 44)]
PREFIX = "dkserver backup: "


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial" in p.name)


def _rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


# -- SQLite: the copy ------------------------------------------------------------


def test_sqlite_backup_is_a_verified_self_contained_copy(tmp_path):
    db = sqlite_database(tmp_path / "dk.db")
    seed(db, USERS, pending={"bob": 5}, sessions={"bob": (2, 1)})
    out = tmp_path / "backups"
    out.mkdir()
    target = out / "dk-copy.db"
    result = dkserver("backup", str(target), "--db", db)
    assert result.rc == 0, result
    assert result.out.startswith(f"backup of {db} written to {target}: ")
    assert "verified (integrity_check ok, row counts match)" in result.out
    assert _rows(target, "PRAGMA integrity_check") == [("ok",)]
    assert _rows(target, "PRAGMA user_version") == [(schema.LATEST_VERSION,)]
    # one file: no -wal beside it, openable read-only anywhere
    assert _rows(target, "PRAGMA journal_mode") == [("delete",)]
    assert sorted(p.name for p in out.iterdir()) == ["dk-copy.db"]
    # the server's data is readable only by its owner; so is the copy
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    original = _rows(Path(db), "SELECT * FROM messages ORDER BY id")
    assert len(original) == 5
    assert _rows(target, "SELECT * FROM messages ORDER BY id") == original
    # the copy is a dkserver database the commands (and the server) accept
    users = dkserver("user", "list", "--json", "--db", str(target)).json()
    assert [u["user_id"] for u in users["users"]] == ["alice", "bob"]


def test_sqlite_backup_json_reports_every_tables_rows(tmp_path):
    db = sqlite_database(tmp_path / "dk.db")
    seed(db, USERS, pending={"bob": 3})
    target = tmp_path / "copy.db"
    doc = dkserver("backup", str(target), "--db", db, "--json").json()
    assert doc["backend"] == "sqlite" and doc["path"] == str(target)
    assert doc["bytes"] == target.stat().st_size
    assert doc["tables"]["users"] == 2 and doc["tables"]["messages"] == 3
    assert set(doc["tables"]) >= {"users", "messages", "sessions", "message_events"}
    assert doc["check"] == "integrity_check ok, row counts match"


def test_an_existing_path_is_refused_unless_forced(tmp_path):
    db = sqlite_database(tmp_path / "dk.db")
    seed(db, USERS)
    target = tmp_path / "copy.db"
    target.write_bytes(b"an older backup")
    result = dkserver("backup", str(target), "--db", db)
    assert result.rc == 2 and result.out == ""
    assert result.one_error_line(PREFIX) == (
        f"{PREFIX}PATH {target} exists; pass --force to replace it"
    )
    assert target.read_bytes() == b"an older backup"
    result = dkserver("backup", str(target), "--db", db, "--force")
    assert result.rc == 0, result
    assert _rows(target, "SELECT user_id FROM users ORDER BY user_id") == [
        ("alice",),
        ("bob",),
    ]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("dir", "PATH {dir} is a directory; name the file to write"),
        ("nodir", "PATH {nodir}: directory {dir}/missing does not exist"),
        ("self", "PATH {self} is the database itself"),
    ],
)
def test_unusable_paths_are_refused(tmp_path, where, message):
    db = sqlite_database(tmp_path / "dk.db")
    names = {
        "dir": str(tmp_path),
        "nodir": str(tmp_path / "missing" / "copy.db"),
        "self": db,
    }
    result = dkserver("backup", names[where], "--db", db, "--force")
    assert result.rc == 2 and result.out == ""
    assert result.one_error_line(PREFIX) == PREFIX + message.format(**names)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: PATH"),
        (("x.db", "--pages", "0"), "argument --pages: must be at least 1, got 0"),
        (("x.db", "--sleep", "-1"), "argument --sleep: must be from 0 to 60, got -1"),
        (("x.db", "--sleep", "soon"), "argument --sleep: 'soon' is not a number"),
        (("x.db", "y.db"), "unrecognized arguments: y.db"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(tmp_path, args, message):
    result = dkserver("backup", *args, cwd=tmp_path)
    assert result.rc == 2 and result.out == ""
    assert message in result.one_error_line("dkserver")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_database_is_refused_and_nothing_is_written(tmp_path):
    result = dkserver("backup", str(tmp_path / "copy.db"), "--db", "nope.db")
    assert result.rc == 2
    assert "database file nope.db does not exist" in result.one_error_line(PREFIX)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_is_exit_1_and_leaves_nothing(tmp_path):
    """The copy cannot be written past 32 KiB (RLIMIT_FSIZE: EFBIG, as a
    full backup disk refuses writes): one line, exit 1, no partial file, the
    database untouched."""
    db = sqlite_database(tmp_path / "dk.db")
    seed(db, USERS, pending={"bob": 400})
    assert Path(db).stat().st_size > 3 * 32768
    before = _rows(Path(db), "SELECT * FROM messages ORDER BY id")
    out = tmp_path / "out"
    out.mkdir()
    result = dkserver("backup", str(out / "copy.db"), "--db", db, max_file_bytes=32768)
    assert result.rc == 1, result
    line = result.one_error_line(f"{PREFIX}copying to {out / 'copy.db'} failed: ")
    assert "disk" in line or "full" in line, line
    assert list(out.iterdir()) == []
    assert _rows(Path(db), "SELECT * FROM messages ORDER BY id") == before


# -- while a real daemon writes (both backends) -----------------------------------


def _without_status(rows: dict[int, tuple]) -> dict[int, tuple]:
    """id -> the row minus its status (receivers mark messages delivered
    while the copy runs; what a message is never changes)."""
    return {mid: row[:3] + row[4:] for mid, row in rows.items()}


async def _rows_at_least(database, count: int) -> dict[int, tuple]:
    for _ in range(400):
        rows = database.messages(read_only=True)
        if len(rows) >= count:
            return rows
        await sleep(0.025)
    raise AssertionError(f"the daemon stored only {len(rows)} messages")


def _restore(dump: Path, url: str) -> dict[int, tuple]:
    done = subprocess.run(
        ["pg_restore", "--no-owner", f"--dbname={url}", str(dump)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return PostgresDatabase(url).messages()


@pytest.mark.both_backends
@pytest_twisted.ensureDeferred
async def test_backup_while_the_daemon_writes_is_one_consistent_snapshot(
    backend, tmp_path, db_target, request
):
    """Senders stream messages (receivers online, so rows are also updated)
    while ``backup`` runs: the copy holds every message committed before it
    started, and exactly a prefix of the ids (ids follow commit order), so
    it is one snapshot; the daemon kept committing while it ran."""
    if backend == "postgresql" and shutil.which("pg_dump") is None:
        pytest.fail("pg_dump is not on PATH (the PostgreSQL client programs)")
    directory = tmp_path / "server"
    directory.mkdir()
    daemon = Daemon(directory, db=db_target if backend == "postgresql" else None)
    target = tmp_path / "backup.db"
    traffic = Traffic()
    try:
        server = await daemon.start()
        senders = [Identity("s0"), Identity("s1")]
        receivers = [Identity("r0"), Identity("r1")]
        _, rx, tx = await open_clients(server, senders, receivers)
        streamers = [
            Streamer(s, tx[s.user_id], ["r0", "r1"], traffic, (64, 256), 2, 0.02)
            for s in senders
        ]
        before = await _rows_at_least(daemon.database, 300)
        extra = ("--pages", "4", "--sleep", "0.01") if backend == "sqlite" else ()
        result = await dkserver_async(
            "backup", str(target), "--db", daemon.database.arg, "--json", *extra
        )
        at_end = daemon.database.messages(read_only=True)
        for streamer in streamers:
            await streamer.stop()
        for client in [*rx.values(), *tx.values()]:
            client.close()
        final = await _rows_at_least(daemon.database, len(at_end))
    finally:
        await daemon.stop()
    report = result.json()
    if backend == "sqlite":
        copy = SqliteFile(target)
        assert copy.integrity_problems() == []
        copied = copy.messages(read_only=True)
    else:
        copied = _restore(target, request.getfixturevalue("pg_empty_url"))
    assert report["tables"]["messages"] == len(copied)
    assert traffic.sender_errors == []
    copied, before, final = map(_without_status, (copied, before, final))
    assert before.items() <= copied.items()
    newest = max(copied)
    assert copied == {mid: row for mid, row in final.items() if mid <= newest}
    # committed while the copy ran: the backup did not hold the writer off
    assert len(at_end) > len(copied)


# -- PostgreSQL: pg_dump ---------------------------------------------------------


def test_postgresql_without_pg_dump_says_how_by_hand(tmp_path, pg_url):
    target = tmp_path / "dk.dump"
    result = dkserver(
        "backup", str(target), "--db", pg_url, "--pg-dump", "no-such-pg_dump"
    )
    assert result.rc == 2 and result.out == ""
    line = result.one_error_line(f"{PREFIX}no-such-pg_dump not found: ")
    assert "pg_dump --format=custom --file=PATH DATABASE-URL" in line
    assert list(tmp_path.iterdir()) == []


def test_a_failing_pg_dump_is_exit_1_and_leaves_nothing(tmp_path, pg_url):
    fake = tmp_path / "bin" / "pg_dump"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'pg_dump: error: server version mismatch' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    (fake.parent / "pg_restore").symlink_to(shutil.which("pg_restore") or "/bin/false")
    out = tmp_path / "out"
    out.mkdir()
    result = dkserver(
        "backup", str(out / "dk.dump"), "--db", pg_url, "--pg-dump", str(fake)
    )
    assert result.rc == 1, result
    assert result.one_error_line(PREFIX) == (
        f"{PREFIX}pg_dump failed: pg_dump: error: server version mismatch"
    )
    assert list(out.iterdir()) == []


def test_postgresql_backup_never_puts_the_password_on_a_command_line(tmp_path, pg_url):
    """pg_dump gets the password in PGPASSWORD, not in its argv (which any
    local user can read in /proc); the report masks it too."""
    password = pg_url.split("@")[0].rsplit(":", 1)[1]
    seen = tmp_path / "argv"
    real = shutil.which("pg_dump")
    assert real is not None, "pg_dump is not on PATH"
    fake = tmp_path / "bin" / "pg_dump"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" > {seen}\nexec {real} "$@"\n')
    fake.chmod(0o755)
    (fake.parent / "pg_restore").symlink_to(shutil.which("pg_restore"))
    seed(pg_url, USERS, pending={"bob": 2})
    target = tmp_path / "dk.dump"
    result = dkserver(
        "backup", str(target), "--db", pg_url, "--pg-dump", str(fake), "--json"
    )
    report = result.json()
    assert password not in seen.read_text() and "--snapshot=" in seen.read_text()
    assert password not in result.out
    assert report["backend"] == "postgresql"
    assert report["tables"]["users"] == 2 and report["tables"]["messages"] == 2
    assert report["bytes"] == target.stat().st_size > 0
