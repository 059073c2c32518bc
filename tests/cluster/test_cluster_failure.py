"""Failures with nothing lost (issue 11, item 6): a node SIGKILLed while
its users send and receive, Redis restarted, the subscriber connections
dropped.  "Acknowledged" is "stored": every message committed to the
database must reach its recipient (same id, at least once), and nothing
that was not stored may arrive."""

from __future__ import annotations

import pytest_twisted

from tests.support.client import Identity, register_and_login
from tests.support.cluster import pg_rows, redis_command
from tests.support.waiting import sleep, wait_for
from tests.support.ws import ConnectionClosed, connect, direct_frame


async def pair(cluster, sender_node: int, recipient_node: int):
    """alice connected on one node, bob on another; bob's token for later."""
    alice = Identity(cluster.user("alice"))
    bob = Identity(cluster.user("bob"))
    alice_token = await register_and_login(cluster[sender_node], alice)
    alice_ws = await connect(cluster[sender_node], alice_token)
    bob_token = await register_and_login(cluster[recipient_node], bob)
    bob_ws = await connect(cluster[recipient_node], bob_token)
    return alice, alice_ws, bob, bob_ws, bob_token


def stored(cluster, sender: Identity, recipient: Identity) -> dict[int, str]:
    return dict(
        pg_rows(
            cluster.pg_url,
            "SELECT id, content FROM messages WHERE from_user = %s AND to_user = %s",
            sender.user_id,
            recipient.user_id,
        )
    )


def send(ws, alice: Identity, bob: Identity, text: str) -> None:
    ws.send_json(direct_frame(alice, bob.user_id, text, bob.public_key_b64))


async def drain(ws, into: dict[int, dict], quiet: float = 0.3) -> None:
    """Read until ``quiet`` seconds pass without a frame or the socket closes."""
    while True:
        try:
            frame = await ws.recv(timeout=quiet)
        except ConnectionClosed:
            return
        except Exception:  # nothing within ``quiet``
            return
        if frame.get("id"):
            into.setdefault(frame["id"], frame)


async def wait_all_received(ws, received, cluster, alice, bob, what: str) -> None:
    async def complete() -> bool:
        await drain(ws, received)
        return set(stored(cluster, alice, bob)) <= set(received)

    await wait_for(complete, what, 20)


def assert_no_phantom(received: dict[int, dict], in_db: dict[int, str]) -> None:
    for message_id, frame in received.items():
        assert in_db.get(message_id) == frame["content"], f"phantom {message_id}"


@pytest_twisted.ensureDeferred
async def test_recipient_node_killed_mid_stream_loses_nothing(cluster):
    alice, alice_ws, bob, bob_ws, bob_token = await pair(cluster, 0, 1)
    received: dict[int, dict] = {}
    for i in range(60):
        send(alice_ws, alice, bob, f"m{i}")
        if i == 30:
            cluster.nodes[1].kill()
        await sleep(0.01)
    await drain(bob_ws, received)
    # Bob's client reconnects (through the balancer) to a surviving node.
    bob_ws = await connect(cluster[2], bob_token)
    await wait_all_received(bob_ws, received, cluster, alice, bob, "all at bob")
    in_db = stored(cluster, alice, bob)
    assert len(in_db) == 60  # the sender's node lived: every one was stored
    assert_no_phantom(received, in_db)
    alice_ws.close()
    bob_ws.close()


@pytest_twisted.ensureDeferred
async def test_sender_node_killed_mid_stream_stored_messages_still_arrive(cluster):
    """A node can die between storing a message and publishing it; the
    survivors rescan when they see it gone, so a recipient that stays
    connected elsewhere gets it without reconnecting."""
    alice, alice_ws, bob, bob_ws, _ = await pair(cluster, 1, 0)
    received: dict[int, dict] = {}
    for i in range(200):
        send(alice_ws, alice, bob, f"m{i}")
    await sleep(0.02)
    cluster.nodes[1].kill()
    await wait_all_received(bob_ws, received, cluster, alice, bob, "stored ones")
    assert_no_phantom(received, stored(cluster, alice, bob))
    bob_ws.close()


@pytest_twisted.ensureDeferred
async def test_messages_stored_while_redis_is_down_arrive_when_it_is_back(cluster):
    alice, alice_ws, bob, bob_ws, _ = await pair(cluster, 0, 1)
    cluster.redis_server.stop()
    for i in range(5):
        send(alice_ws, alice, bob, f"while down {i}")
    # Stored without Redis (the database is the source of truth).
    await wait_for(lambda: len(stored(cluster, alice, bob)) == 5, "5 stored", 10)
    cluster.redis_server.start()
    received: dict[int, dict] = {}
    await wait_all_received(bob_ws, received, cluster, alice, bob, "rescan")
    assert_no_phantom(received, stored(cluster, alice, bob))
    # Live delivery and presence work again (nodes re-announce their users).
    send(alice_ws, alice, bob, "after")
    await wait_all_received(bob_ws, received, cluster, alice, bob, "live again")

    async def both_online_on_2() -> bool:
        online, _ = await cluster.active_users(2)
        return {alice.user_id, bob.user_id} <= online

    await wait_for(both_online_on_2, "presence re-announced", 15)
    alice_ws.close()
    bob_ws.close()


@pytest_twisted.ensureDeferred
async def test_dropped_subscriber_connections_resubscribe(cluster):
    alice, alice_ws, bob, bob_ws, _ = await pair(cluster, 0, 2)
    killed = redis_command(cluster.redis_url, "CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 3  # one subscriber per node
    received: dict[int, dict] = {}
    # Whatever is sent now arrives: live once resubscribed, or by the rescan.
    for i in range(10):
        send(alice_ws, alice, bob, f"m{i}")
        await sleep(0.05)
    await wait_all_received(bob_ws, received, cluster, alice, bob, "all ten")
    assert len(received) == 10
    alice_ws.close()
    bob_ws.close()


@pytest_twisted.ensureDeferred
async def test_a_paused_redis_declares_no_node_dead_and_loses_nothing(cluster):
    """SIGSTOP on Redis longer than the node expiry: every stamp is stale
    when it resumes, which is Redis's pause, not the nodes' death."""
    alice, alice_ws, bob, bob_ws, _ = await pair(cluster, 0, 2)
    logs_before = [len(node.log_text()) for node in cluster.nodes]
    cluster.redis_server.pause()
    try:
        for i in range(3):
            send(alice_ws, alice, bob, f"while paused {i}")
        await wait_for(lambda: len(stored(cluster, alice, bob)) == 3, "stored", 10)
        await sleep(5.5)  # past NODE_EXPIRY
    finally:
        cluster.redis_server.resume()
    received: dict[int, dict] = {}
    await wait_all_received(bob_ws, received, cluster, alice, bob, "after resume")

    async def both_online_on_1() -> bool:
        online, _ = await cluster.active_users(1)
        return {alice.user_id, bob.user_id} <= online

    await wait_for(both_online_on_1, "presence back", 15)
    for node, start in zip(cluster.nodes, logs_before, strict=True):
        assert "is gone" not in node.log_text()[start:], node.node_id
    alice_ws.close()
    bob_ws.close()
