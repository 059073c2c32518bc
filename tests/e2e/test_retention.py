"""End to end: the pending quota over a real WebSocket, and the server's own
prune timer (settings, metrics, /stats across it)."""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from dkserver.store.messages import NewMessage
from tests.e2e.test_ws_messaging import assert_system_error, close_and_wait, users
from tests.support.client import get
from tests.support.db import db_rows
from tests.support.metrics import sample, scrape
from tests.support.server import start_server, stop_server
from tests.support.waiting import wait_for
from tests.support.ws import connect, direct_frame

pytestmark = pytest.mark.both_backends

DAY = 86_400 * 10**9


def pending_for(server, user_id: str) -> int:
    return db_rows(
        server,
        "SELECT COUNT(*) FROM messages WHERE to_user = ? AND status = 'pending'",
        user_id,
    )[0][0]


@pytest_twisted.async_yield_fixture
async def quota_server(backend_config):
    running = await start_server(
        backend_config(
            message_rate=10_000.0,
            message_burst=10_000,
            pending_quota_messages=3,
            pending_quota_bytes=4000,
        )
    )
    yield running
    await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_the_sender_is_told_when_an_offline_recipient_is_full(quota_server):
    server = quota_server
    (alice, alice_token), (bob, bob_token), (carol, _) = await users(
        server, "alice", "bob", "carol"
    )
    ws = await connect(server, alice_token)
    for i in range(3):
        ws.send_json(direct_frame(alice, "bob", f"m{i}", bob.public_key_b64))
    await wait_for(lambda: pending_for(server, "bob") == 3, "three stored for bob")
    ws.send_json(direct_frame(alice, "bob", "one too many", bob.public_key_b64))
    refusal = await ws.recv()
    assert_system_error(refusal, "alice")
    assert "'bob'" in refusal["content"] and "3 messages" in refusal["content"]
    assert pending_for(server, "bob") == 3  # nothing stored
    # another recipient is not affected
    ws.send_json(direct_frame(alice, "carol", "hello", carol.public_key_b64))
    await wait_for(lambda: pending_for(server, "carol") == 1, "carol's message")

    # bob comes online and takes his three: his deliveries on this node make
    # the next message to him ask the database again, which has room
    bob_ws = await connect(server, bob_token)
    assert len(await bob_ws.recv_all(3)) == 3
    await wait_for(lambda: pending_for(server, "bob") == 0, "bob's marks")
    ws.send_json(direct_frame(alice, "bob", "again", bob.public_key_b64))
    frame = await bob_ws.recv()
    assert frame["from"] == "alice"
    await ws.expect_silence(0.2)
    await close_and_wait(bob_ws)

    # the byte quota: one large message fills bob's 4000 bytes
    ws.send_json(direct_frame(alice, "bob", "x" * 2000, bob.public_key_b64))
    await wait_for(lambda: pending_for(server, "bob") == 1, "the large one stored")
    ws.send_json(direct_frame(alice, "bob", "y" * 2000, bob.public_key_b64))
    refusal = await ws.recv()
    assert_system_error(refusal, "alice")
    assert "4000 bytes" in refusal["content"]
    assert pending_for(server, "bob") == 1

    text = await scrape(server)
    assert sample(text, "dkserver_pending_quota_refused_messages_total") == 2.0
    await close_and_wait(ws)


@pytest_twisted.async_yield_fixture
async def pruning_server(backend_config):
    running = await start_server(
        backend_config(admin_users=frozenset({"alice"}), prune_interval=0.2)
    )
    yield running
    await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_the_server_prunes_on_its_timer_and_stats_stay(pruning_server):
    server = pruning_server
    ((_, token), _) = await users(server, "alice", "bob")
    store = server.service.store
    now = time.time_ns()

    def old(to: str, days: int) -> NewMessage:
        return NewMessage(
            "alice",
            to,
            "2026-01-01T00:00:00Z",
            "old",
            to == "broadcast",
            None,
            False,
            now - days * DAY,
        )

    # written straight into the server's store, as if long ago
    ids = await store.messages.add_many([old("bob", 40), old("bob", 40)])
    await store.messages.mark_delivered(ids, delivered_ns=now - 35 * DAY)
    (stale,) = await store.messages.add_many([old("bob", 100)])
    (bcast,) = await store.messages.add_many([old("broadcast", 31)])
    await store.messages.record_broadcast_deliveries([(bcast, "bob")])
    auth = {"Authorization": f"Bearer {token}"}

    await wait_for(
        lambda: db_rows(server, "SELECT COUNT(*) FROM messages")[0][0] == 0,
        "the timer's pass",
        timeout=10,
    )
    text = await scrape(server)
    assert sample(text, "dkserver_pruned_rows_total", table="messages") == 4.0
    assert (
        sample(text, "dkserver_pruned_rows_total", table="broadcast_deliveries") == 1.0
    )
    assert sample(text, "dkserver_pending_messages_dropped_total") == 1.0
    code, stats = await get(server, "/stats", auth)
    assert code == 200, stats
    assert stats["messages"]["all_time"] == {"direct": 3, "broadcast": 1, "total": 4}
    assert stale not in [m.id for m in await store.messages.pending_direct("bob")]
