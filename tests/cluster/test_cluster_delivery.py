"""Live delivery across nodes (issue 11, item 1): direct messages reach
every connection of the recipient on other nodes, broadcasts every
connected user on every node once, and what is stored between a node's
subscription and its backlog scan is neither lost nor sent twice."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.defer import Deferred

from tests.support.client import Identity, register_and_login
from tests.support.cluster import pg_rows, redis_command
from tests.support.envelope import decrypt_with
from tests.support.metrics import sample, scrape
from tests.support.waiting import sleep, wait_for
from tests.support.ws import broadcast_frame, connect, direct_frame


async def login_on(cluster, index: int, name: str) -> tuple[Identity, str]:
    ident = Identity(cluster.user(name))
    return ident, await register_and_login(cluster[index], ident)


async def delivery_count(node, kind: str) -> float:
    """How many deliveries ``node`` has timed, store to proof of reading."""
    text = await scrape(node)
    return sample(text, "dkserver_delivery_latency_seconds_count", kind=kind) or 0


def status(cluster, message_id: int) -> str | None:
    rows = pg_rows(
        cluster.pg_url, "SELECT status FROM messages WHERE id = %s", message_id
    )
    return rows[0][0] if rows else None


@pytest_twisted.ensureDeferred
async def test_direct_message_reaches_every_connection_on_other_nodes(cluster):
    alice, alice_token = await login_on(cluster, 0, "alice")
    bob, bob_token = await login_on(cluster, 1, "bob")
    # A token from one node is good on every node (one shared secret).
    alice_ws = await connect(cluster[0], alice_token)
    bob_on_1 = await connect(cluster[1], bob_token)
    bob_on_2 = await connect(cluster[2], bob_token)
    before = [await delivery_count(cluster[i], "direct") for i in (1, 2)]

    alice_ws.send_json(
        direct_frame(alice, bob.user_id, "across nodes", bob.public_key_b64)
    )
    got_1, got_2 = await bob_on_1.recv(), await bob_on_2.recv()
    assert got_1["id"] == got_2["id"]
    assert decrypt_with(bob.signing_key, got_1["content"]) == "across nodes"
    assert got_1["from"] == alice.user_id and got_2["to"] == bob.user_id
    await alice_ws.expect_silence(0.2)
    # The node holding a connection records the delivery.
    await wait_for(lambda: status(cluster, got_1["id"]) == "delivered", "delivered")
    # Each node that delivered it timed it, though it was stored on another.
    for i, count in zip((1, 2), before, strict=True):

        async def timed(node=cluster[i], count=count) -> bool:
            return await delivery_count(node, "direct") > count

        await wait_for(timed, f"node {i} timing the delivery")
    for ws in (alice_ws, bob_on_1, bob_on_2):
        ws.close()


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_each_user_on_every_node_once(cluster):
    alice, alice_token = await login_on(cluster, 0, "alice")
    bob, bob_token = await login_on(cluster, 1, "bob")
    carol, carol_token = await login_on(cluster, 2, "carol")
    _, dave_token = await login_on(cluster, 2, "dave")
    alice_ws = await connect(cluster[0], alice_token)
    bob_ws = await connect(cluster[1], bob_token)
    carol_on_2 = await connect(cluster[2], carol_token)
    carol_on_0 = await connect(cluster[0], carol_token)
    before = [await delivery_count(cluster[i], "broadcast") for i in (1, 2)]

    alice_ws.send_json(broadcast_frame(alice, "to everyone"))
    got = [await ws.recv() for ws in (bob_ws, carol_on_2, carol_on_0)]
    assert {g["id"] for g in got} == {got[0]["id"]}
    assert all(g["is_broadcast"] and g["content"] == "to everyone" for g in got)
    for ws in (alice_ws, bob_ws, carol_on_2, carol_on_0):
        await ws.expect_silence(0.3)  # nobody twice, not the sender
    message_id = got[0]["id"]

    def recipients() -> set[str]:
        rows = pg_rows(
            cluster.pg_url,
            "SELECT user_id FROM broadcast_deliveries WHERE message_id = %s",
            message_id,
        )
        return {r[0] for r in rows}

    await wait_for(
        lambda: recipients() == {bob.user_id, carol.user_id}, "deliveries recorded"
    )
    for i, count in zip((1, 2), before, strict=True):

        async def timed(node=cluster[i], count=count) -> bool:
            return await delivery_count(node, "broadcast") > count

        await wait_for(timed, f"node {i} timing the broadcast's delivery")
    # Offline then: dave gets it from the backlog, once, on any node.
    dave_ws = await connect(cluster[1], dave_token)
    assert (await dave_ws.recv())["id"] == message_id
    await dave_ws.expect_silence(0.3)
    for ws in (alice_ws, bob_ws, carol_on_2, carol_on_0, dave_ws):
        ws.close()


@pytest_twisted.ensureDeferred
async def test_messages_stored_while_the_recipient_connects_arrive_once(cluster):
    """The sender streams while the recipient connects on another node: each
    connection gets every message once, whether it was stored before the
    connection's backlog scan (backlog) or after (live)."""
    alice, alice_token = await login_on(cluster, 0, "alice")
    bob, bob_token = await login_on(cluster, 1, "bob")
    alice_ws = await connect(cluster[0], alice_token)
    sent = 0

    def send(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            sent += 1
            alice_ws.send_json(
                direct_frame(alice, bob.user_id, f"m{sent}", bob.public_key_b64)
            )

    for round_number in range(4):
        first = sent + 1
        send(20)
        # Connect while more are in flight: some commit before the scan,
        # some between the subscription and the scan, some after.
        connecting = Deferred.fromCoroutine(
            connect(cluster[1 + round_number % 2], bob_token)
        )
        for _ in range(10):
            send(3)
            await sleep(0.005)
        bob_ws = await connecting
        wanted = set(range(first, sent + 1))
        seen: list[int] = []
        while not wanted <= {seq(bob, m) for m in seen}:
            seen.append(await bob_ws.recv(timeout=10))
        numbers = [seq(bob, m) for m in seen]
        ids = [m["id"] for m in seen]
        assert len(ids) == len(set(ids)), (
            f"a message twice on one connection: {numbers}"
        )
        assert set(numbers) >= wanted
        await bob_ws.expect_silence(0.3)
        bob_ws.close()
        await bob_ws.wait_closed()
    alice_ws.close()


def seq(ident: Identity, frame: dict) -> int:
    return int(decrypt_with(ident.signing_key, frame["content"])[1:])


@pytest_twisted.ensureDeferred
async def test_a_live_copy_arriving_after_the_backlog_sent_it_is_dropped(cluster):
    """The scan reads a message whose publish is still on its way (here:
    held by a paused Redis, shorter than the client's 3 s reply timeout);
    when the publish lands after that backlog is done, the connection that
    got the message from its backlog must not get it again, while the one
    that had no backlog gets it live, once."""
    alice, alice_token = await login_on(cluster, 0, "alice")
    bob, bob_token = await login_on(cluster, 1, "bob")
    alice_ws = await connect(cluster[0], alice_token)
    # Node 1 holds bob's channel now, so the second connection's scan does
    # not wait for a subscription.
    bob_live = await connect(cluster[1], bob_token)
    await wait_for(
        lambda: (
            redis_command(cluster.redis_url, "PUBSUB", "NUMSUB", f"dk:u:{bob.user_id}")[
                1
            ]
            == 1
        ),
        "node 1 subscribed to bob's channel",
        10,
    )
    await bob_live.expect_silence(0.2)  # its (empty) backlog is done
    node0_log = len(cluster.nodes[0].log_text())
    node1_log = len(cluster.nodes[1].log_text())
    done = f"sent 5 stored messages to {bob.user_id}"
    cluster.redis_server.pause()
    try:
        for i in range(5):
            alice_ws.send_json(
                direct_frame(alice, bob.user_id, f"m{i + 1}", bob.public_key_b64)
            )
        await wait_for(
            lambda: (
                len(
                    pg_rows(
                        cluster.pg_url,
                        "SELECT id FROM messages WHERE to_user = %s",
                        bob.user_id,
                    )
                )
                == 5
            ),
            "all five stored",
            10,
        )
        bob_backlog = await connect(cluster[1], bob_token, timeout=15)
        from_backlog = await bob_backlog.recv_all(5, timeout=15)
        await wait_for(
            lambda: done in cluster.nodes[1].log_text()[node1_log:],
            "the second connection's backlog done",
            10,
        )
    finally:
        cluster.redis_server.resume()
    assert sorted(seq(bob, m) for m in from_backlog) == [1, 2, 3, 4, 5]
    live = await bob_live.recv_all(5, timeout=15)
    assert sorted(seq(bob, m) for m in live) == [1, 2, 3, 4, 5]
    # Had the publishes timed out, the other connection would have got the
    # messages from a rescan, and this test would prove nothing.
    assert "publish failed" not in cluster.nodes[0].log_text()[node0_log:], (
        "the pause outlasted the Redis reply timeout"
    )
    await bob_backlog.expect_silence(1.0)
    await bob_live.expect_silence(0.3)
    for ws in (alice_ws, bob_live, bob_backlog):
        ws.close()
