"""Upgrading the original Go server's database in place (the shared fixture)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from dkserver import timestamps
from dkserver.store import NewMessage, Store, preflight
from tests.support.paths import FIXTURES

#: About the original server's SQLite file.
pytestmark = pytest.mark.sqlite_only

SENT = json.loads((FIXTURES / "original-server.json").read_text())["sent"]


@pytest_twisted.ensureDeferred
async def test_original_database_upgrades_in_place_and_delivers(original_db, sql):
    preflight(original_db)
    store = await Store.open(original_db, reactor)
    try:
        assert await store.users.all_ids() == ["alice", "bob", "carol"]
        alice = await store.users.get("alice")
        assert alice.public_key == "j8Vz7cAzD3KgwRojt1+fGNjVxO+Wyeutn3tV++4b2to="
        # created_at 2026-11-26 04:45:40, UTC
        assert alice.registered_ns == 1795668340 * 10**9

        pending = await store.messages.pending_direct("bob")
        assert [m.id for m in pending] == [1, 2]
        for got, sent in zip(pending, SENT[:2], strict=True):
            assert timestamps.parse(got.timestamp).unix_nanos == sent["unix_nanos"]
            assert got.content == sent["content"]
            assert got.signature == sent["signature"]
            assert (got.from_user, got.to_user, got.status) == (
                "alice",
                "bob",
                "pending",
            )
        assert pending[0].timestamp == "2026-11-26T01:45:42.123456789-03:00"
        assert pending[1].to_wire() == {
            "id": 2,
            "from": "alice",
            "to": "bob",
            # as the original renders its own row, and as alice sent it
            "timestamp": "2026-11-26T04:45:43.000000001Z",
            "content": SENT[1]["content"],
            "status": "pending",
            "signature": SENT[1]["signature"],
        }

        carol = SENT[2]
        for user in ("bob", "alice"):
            (b,) = await store.messages.undelivered_broadcasts(user)
            assert (b.id, b.from_user, b.to_user, b.is_broadcast) == (
                3,
                "carol",
                "broadcast",
                True,
            )
            assert timestamps.parse(b.timestamp).unix_nanos == carol["unix_nanos"]
            assert b.timestamp == carol["timestamp"]
            assert (b.content, b.signature) == (carol["content"], carol["signature"])
        assert await store.messages.undelivered_broadcasts("carol") == []

        await store.messages.record_broadcast_deliveries([(3, "bob")])
        assert await store.messages.undelivered_broadcasts("bob") == []
        assert [m.id for m in await store.messages.undelivered_broadcasts("alice")] == [
            3
        ]

        await store.messages.mark_delivered([1, 2])
        assert await store.messages.pending_direct("bob") == []

        assert await store.descriptions.get("alice") == [
            "Alice knows about distributed systems",
            "and Twisted",
        ]

        # foreign keys are on, and a broadcast (to_user 'broadcast') still inserts
        (new_id,) = await store.messages.add_many(
            [
                NewMessage(
                    from_user="bob",
                    to_user="broadcast",
                    timestamp="2026-11-26T05:00:00.5Z",
                    content="hello all",
                    is_broadcast=True,
                    signature="c2ln",
                    is_forward_message=False,
                    received_ns=1795669200 * 10**9,
                )
            ]
        )
        assert new_id == 4
        assert [m.id for m in await store.messages.undelivered_broadcasts("carol")] == [
            4
        ]
        fk_on = await store._pool.runWithConnection(
            lambda c: c.execute("PRAGMA foreign_keys").fetchone()[0]
        )
        assert fk_on == 1
    finally:
        await store.close()

    assert sql(original_db, "PRAGMA integrity_check") == [("ok",)]
    assert sql(original_db, "PRAGMA foreign_key_check") == []
    assert sql(original_db, "SELECT COUNT(*) FROM sessions") == [(2,)]
    assert sql(original_db, "SELECT COUNT(*) FROM message_events") == [(3,)]
    # the original's later-feature tables are left alone
    assert sql(original_db, "SELECT COUNT(*) FROM user_trackers") == [(0,)]
    assert sql(original_db, "SELECT COUNT(*) FROM user_apis") == [(0,)]
    assert sql(
        original_db, "SELECT seq FROM sqlite_sequence WHERE name='messages'"
    ) == [(4,)]
    # the new row is stored in the original's format; its text needs no copy
    assert sql(
        original_db,
        "SELECT timestamp, status, client_timestamp FROM messages WHERE id = 4",
    ) == [("2026-11-26 05:00:00.5+00:00", "pending", None)]
    # the original's rows are untouched
    assert sql(
        original_db, "SELECT timestamp, client_timestamp FROM messages WHERE id < 4"
    ) == [
        ("2026-11-26 01:45:42.123456789-03:00", None),
        ("2026-11-26 04:45:43.000000001+00:00", None),
        ("2026-11-26 10:15:44.987654321+05:30", None),
    ]


@pytest_twisted.ensureDeferred
async def test_original_database_legacy_received_ns_are_exact(original_db, sql):
    store = await Store.open(original_db, reactor)
    await store.close()
    rows = sql(original_db, "SELECT received_ns FROM messages ORDER BY id")
    assert rows == [(s["unix_nanos"],) for s in SENT]
    # content and signature columns untouched, byte for byte
    stored = sql(original_db, "SELECT content, signature FROM messages ORDER BY id")
    assert stored == [(s["content"], s["signature"]) for s in SENT]


@pytest_twisted.ensureDeferred
async def test_original_database_second_open_is_a_no_op(original_db, sql):
    store = await Store.open(original_db, reactor)
    await store.messages.record_broadcast_deliveries([(3, "bob")])
    await store.close()
    dump = sql(original_db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")

    store = await Store.open(original_db, reactor)
    try:
        assert [m.id for m in await store.messages.pending_direct("bob")] == [1, 2]
        assert await store.messages.undelivered_broadcasts("bob") == []
    finally:
        await store.close()
    assert (
        sql(original_db, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
        == dump
    )
