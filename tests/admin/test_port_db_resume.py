"""``port-db`` killed mid-copy resumes where it stopped and ends equal."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time

import psycopg

from dkserver.store import schema
from tests.admin.portdb import COMMAND, pg_count, run_port_process

MESSAGES = 50_000
SESSIONS = 2_000
EVENTS = 10_000


def _big_database(path) -> None:
    """A dkserver database with 50k messages, written as dkserver writes them."""
    conn = sqlite3.connect(path)
    schema.migrate_connection(conn)
    users = [(f"user{i}", f"user{i}", f"key{i:040d}", i) for i in range(20)]
    conn.executemany(
        "INSERT INTO users (user_id, username, public_key, registered_ns)"
        " VALUES (?, ?, ?, ?)",
        users,
    )
    conn.executemany(
        "INSERT INTO messages (from_user, to_user, timestamp, content, status,"
        " is_broadcast, signature, received_ns, client_timestamp)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (
                f"user{i % 20}",
                "broadcast" if i % 10 == 0 else f"user{(i + 1) % 20}",
                f"2026-11-26 01:{i // 3600 % 60:02d}:{i % 60:02d}.{i:09d}-03:00",
                "c" * 200 + str(i),
                "pending" if i % 3 else "delivered",
                int(i % 10 == 0),
                f"sig{i}",
                1_795_668_342_000_000_000 + i,
                f"2026-11-26T04:00:00.{i:09d}Z" if i % 7 == 0 else None,
            )
            for i in range(MESSAGES)
        ),
    )
    conn.executemany(
        "INSERT INTO broadcast_deliveries (message_id, user_id) VALUES (?, ?)",
        ((m, f"user{u}") for m in range(1, MESSAGES, 100) for u in range(3)),
    )
    conn.executemany(
        "INSERT INTO sessions (session_id, user_id, start_time, end_time, duration)"
        " VALUES (?, ?, ?, ?, ?)",
        (
            (f"s{i:06d}", f"user{i % 20}", "2026-11-26 01:00:00", None, None)
            for i in range(SESSIONS)
        ),
    )
    conn.executemany(
        "INSERT INTO message_events (session_id, user_id, is_broadcast, timestamp)"
        " VALUES (?, ?, ?, ?)",
        (
            (f"s{i % SESSIONS:06d}", f"user{i % 20}", i % 2, "2026-11-26 02:00:00")
            for i in range(EVENTS)
        ),
    )
    conn.commit()
    conn.close()


def _stop_mid_copy(db, url, work_dir, signum) -> subprocess.Popen:
    """Start a port and send ``signum`` once its first messages are committed."""
    work_dir.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [*COMMAND, str(db), url, "--chunk-size", "200", "--work-dir", str(work_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        copied = 0
        deadline = time.monotonic() + 120
        with psycopg.connect(url, autocommit=True) as pg:
            while copied == 0 and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()
                if pg.execute("SELECT to_regclass('messages')").fetchone()[0]:
                    copied = pg.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
                time.sleep(0.01)
        proc.send_signal(signum)
        proc.stdout_text, proc.stderr_text = proc.communicate(timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    return proc


def test_port_killed_mid_copy_resumes_and_ends_equal(tmp_path, pg_empty_url):
    db = tmp_path / "big.db"
    _big_database(db)

    proc = _stop_mid_copy(db, pg_empty_url, tmp_path / "work", signal.SIGKILL)

    assert proc.returncode == -signal.SIGKILL
    partial = pg_count(pg_empty_url, "messages")
    assert 0 < partial < MESSAGES
    assert partial % 200 == 0  # whole chunks only: the one in flight rolled back
    assert pg_count(pg_empty_url, "message_events") == 0

    resumed = run_port_process(str(db), pg_empty_url, "--chunk-size", "1000")

    assert resumed.rc == 0, resumed.err
    assert (
        f"messages: {MESSAGES} rows to copy, {partial} already in PostgreSQL, "
        f"{MESSAGES - partial} copied" in resumed.out
    )
    assert f"verify messages: {MESSAGES} rows, last key {MESSAGES}" in resumed.out
    assert f"verify message_events: {EVENTS} rows" in resumed.out
    assert "holds a verified copy" in resumed.out
    assert pg_count(pg_empty_url, "messages") == MESSAGES
    assert pg_count(pg_empty_url, "broadcast_deliveries") == 3 * len(
        range(1, MESSAGES, 100)
    )
    assert pg_count(pg_empty_url, "sessions") == SESSIONS
    with psycopg.connect(pg_empty_url) as pg:
        assert pg.execute(
            "SELECT COUNT(DISTINCT id), MIN(id), MAX(id) FROM messages"
        ).fetchone() == (MESSAGES, 1, MESSAGES)
        next_id = pg.execute("SELECT nextval(pg_get_serial_sequence('messages', 'id'))")
        assert next_id.fetchone()[0] == MESSAGES + 1


def test_port_terminated_mid_copy_cleans_up_and_resumes(tmp_path, pg_empty_url):
    db = tmp_path / "big.db"
    _big_database(db)
    work = tmp_path / "work"

    proc = _stop_mid_copy(db, pg_empty_url, work, signal.SIGTERM)

    assert proc.returncode == 130
    assert proc.stderr_text.strip().splitlines() == [
        "port-db: interrupted; run it again to resume"
    ]
    assert list(work.iterdir()) == []  # the temporary copy is gone
    partial = pg_count(pg_empty_url, "messages")
    assert 0 < partial < MESSAGES

    resumed = run_port_process(str(db), pg_empty_url)

    assert resumed.rc == 0, resumed.err
    assert f"{partial} already in PostgreSQL, {MESSAGES - partial} copied" in (
        resumed.out
    )
    assert pg_count(pg_empty_url, "messages") == MESSAGES
