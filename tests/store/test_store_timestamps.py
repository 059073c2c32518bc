"""Stored timestamps: the original's column format is what is written (the
original server must still read the file), and the client's exact text is
what is read back (schema v4, ``messages.client_timestamp``)."""

from __future__ import annotations

import re
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from dkserver import timestamps
from dkserver.store import NewMessage, Store
from dkserver.store.schema import LATEST_VERSION
from dkserver.store.writer import GroupWriter

T0 = 1_800_000_000 * 10**9

#: mattn/go-sqlite3's first layout, ``2006-01-02 15:04:05.999999999-07:00``:
#: what the original writes and reads back first.
GO_COLUMN = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"[+-][0-9]{2}:[0-9]{2}"
)

#: (client text, stored column, whether the text must be kept beside it)
CASES = [
    ("2026-12-01T18:30:36.417215494Z", "2026-12-01 18:30:36.417215494+00:00", False),
    (
        "2026-12-01T18:30:36.417215494+00:00",
        "2026-12-01 18:30:36.417215494+00:00",
        True,
    ),
    (
        "2026-12-01T15:30:36.417215494-03:00",
        "2026-12-01 15:30:36.417215494-03:00",
        False,
    ),
    ("2026-12-01T18:30:36Z", "2026-12-01 18:30:36+00:00", False),
    ("2026-12-01T18:30:36.120000000Z", "2026-12-01 18:30:36.120000000+00:00", False),
    ("2026-12-01T18:30:36.4+00:00", "2026-12-01 18:30:36.4+00:00", True),
    ("2026-12-01t18:30:36.41z", "2026-12-01 18:30:36.41+00:00", True),
]


def message(sender: str, to: str, text: str, n: int = 0) -> NewMessage:
    return NewMessage(
        from_user=sender,
        to_user=to,
        timestamp=text,
        content=f"m{n}",
        is_broadcast=to == "broadcast",
        signature="c2ln",
        is_forward_message=False,
        received_ns=T0 + 10 + n,
    )


async def register(store: Store, *user_ids: str) -> None:
    for uid in user_ids:
        await store.users.create(uid, uid.title(), "a2V5", registered_ns=T0)


def check_columns(sql, db_path: str, ids: list[int]) -> None:
    marks = ",".join("?" * len(ids))
    rows = sql(
        db_path,
        f"SELECT timestamp, client_timestamp FROM messages WHERE id IN ({marks})"
        " ORDER BY id",
        tuple(ids),
    )
    assert rows == [(column, text if kept else None) for text, column, kept in CASES]
    for column, _ in rows:
        assert GO_COLUMN.fullmatch(column), column
    # The original's broadcast query compares datetime(m.timestamp): SQLite
    # must still read every column dkserver writes.
    assert sql(
        db_path,
        f"SELECT COUNT(*) FROM messages WHERE id IN ({marks})"
        " AND datetime(timestamp) IS NOT NULL",
        tuple(ids),
    ) == [(len(ids),)]


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_add_many_writes_the_original_format_and_reads_back_the_exact_text(
    store, sql, db_path
):
    await register(store, "alice", "bob", "carol")
    direct = await store.messages.add_many(
        [message("alice", "bob", text, n) for n, (text, _, _) in enumerate(CASES)]
    )
    check_columns(sql, db_path, direct)
    pending = await store.messages.pending_direct("bob")
    assert [m.timestamp for m in pending] == [text for text, _, _ in CASES]
    assert [m.to_wire()["timestamp"] for m in pending] == [t for t, _, _ in CASES]

    broadcasts = await store.messages.add_many(
        [message("carol", "broadcast", text, n) for n, (text, _, _) in enumerate(CASES)]
    )
    check_columns(sql, db_path, broadcasts)
    offered = await store.messages.undelivered_broadcasts("bob")
    assert [m.timestamp for m in offered] == [text for text, _, _ in CASES]


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_group_writer_writes_the_original_format_and_keeps_exact_text(
    store, sql, db_path
):
    await register(store, "alice", "bob")
    writer = GroupWriter(store.pool, reactor)
    # one batch, mixed forms: one executemany writes them all
    ids = await gatherResults(
        [
            writer.submit_message(message("alice", "bob", text, n), None)
            for n, (text, _, _) in enumerate(CASES)
        ]
    )
    assert writer.batches == 1
    await writer.flush()
    check_columns(sql, db_path, ids)
    for mid, (text, _, _) in zip(ids, CASES, strict=True):
        assert (await store.messages.get(mid)).timestamp == text


@pytest.mark.parametrize(
    ("stored", "rendered"),
    [
        ("2026-11-26 01:45:42.123456789-03:00", "2026-11-26T01:45:42.123456789-03:00"),
        ("2026-11-26 04:45:43.000000001+00:00", "2026-11-26T04:45:43.000000001Z"),
        ("2026-11-26 10:15:44.987654321+05:30", "2026-11-26T10:15:44.987654321+05:30"),
        ("2026-11-26 04:45:43.000000001", "2026-11-26T04:45:43.000000001Z"),
        ("2026-11-26 04:45:43", "2026-11-26T04:45:43Z"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_rows_written_by_the_original_render_as_it_renders_them(
    store, sql, db_path, stored, rendered
):
    await register(store, "alice", "bob")
    # as the original writes a row: its column format, no client_timestamp
    sql(
        db_path,
        "INSERT INTO messages (from_user, to_user, timestamp, content, status,"
        " is_broadcast, signature, is_forward_message, received_ns)"
        " VALUES ('alice', 'bob', ?, 'x', 'pending', 0, '', 0, ?)",
        (stored, T0 + 1),
    )
    (got,) = await store.messages.pending_direct("bob")
    assert got.timestamp == rendered


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_version_3_database_gains_client_timestamp_and_keeps_its_rows(
    db_path, sql
):
    store = await Store.open(db_path, reactor)
    await register(store, "alice", "bob")
    await store.close()
    # Make it a database left by a version-3 dkserver, with a row it wrote.
    con = sqlite3.connect(db_path)
    con.execute("ALTER TABLE messages DROP COLUMN client_timestamp")
    con.execute(
        "INSERT INTO messages (from_user, to_user, timestamp, content, status,"
        " is_broadcast, signature, is_forward_message, received_ns)"
        " VALUES ('alice', 'bob', '2026-11-26 04:45:43.1+00:00', 'old', 'pending',"
        " 0, '', 0, ?)",
        (T0 + 1,),
    )
    con.execute("PRAGMA user_version=3")
    con.commit()
    con.close()

    store = await Store.open(db_path, reactor)
    try:
        assert sql(db_path, "PRAGMA user_version") == [(LATEST_VERSION,)]
        (new_id,) = await store.messages.add_many(
            [message("alice", "bob", "2026-11-26T04:45:44.2+00:00")]
        )
        old, new = await store.messages.pending_direct("bob")
        # the old row has no client text: rendered as the original would
        assert old.timestamp == "2026-11-26T04:45:43.1Z"
        assert (new.id, new.timestamp) == (new_id, "2026-11-26T04:45:44.2+00:00")
        assert sql(
            db_path, "SELECT timestamp, client_timestamp FROM messages ORDER BY id"
        ) == [
            ("2026-11-26 04:45:43.1+00:00", None),
            ("2026-11-26 04:45:44.2+00:00", "2026-11-26T04:45:44.2+00:00"),
        ]
        # the stored column still names the instant the signature covers
        assert (
            timestamps.parse("2026-11-26 04:45:44.2+00:00").unix_nanos
            == timestamps.parse(new.timestamp).unix_nanos
        )
    finally:
        await store.close()
