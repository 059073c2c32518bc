"""Shared limits across two real dkserver processes on one PostgreSQL and one
Redis: a challenge from node A verifies on node B once; the login burst per
IP, the connection cap per user and the message rate per user are each one
budget for both nodes.

The two nodes are started by a minimal starter of this module's own
(tests/reliability/daemon.Daemon on a PostgreSQL URL, with --redis and a node
id) until the cluster harness (tests/support/cluster.py) is on main.
"""

from __future__ import annotations

import contextlib

import pytest_twisted

from tests.reliability.daemon import Daemon
from tests.support.client import Identity, get, login, post_json, register
from tests.support.waiting import wait_for
from tests.support.ws import HandshakeRefused, connect, signed_frame

RATE_LIMITED = "Rate limit exceeded. Please slow down."


@contextlib.asynccontextmanager
async def two_nodes(tmp_path, pg_url: str, redis_url: str, **env: str):
    """Nodes "a" and "b" as twistd processes sharing the database, Redis and
    the JWT secret file; yields their handles (what tests.support.client
    calls a server)."""
    daemons = []
    try:
        for name in ("a", "b"):
            directory = tmp_path / name
            directory.mkdir()
            daemon = Daemon(
                directory,
                db=pg_url,
                DK_REDIS_URL=redis_url,
                DK_NODE_ID=name,
                DK_JWT_SECRET_FILE=str(tmp_path / "jwt-secret"),
                **env,
            )
            daemons.append(daemon)
            await daemon.start(timeout=30.0)
        yield [d.handle for d in daemons]
    finally:
        for daemon in daemons:
            await daemon.stop()
            daemon.kill_now()


async def challenge(node, user_id: str) -> tuple[int, dict]:
    return await post_json(node, "/auth/login", {"user_id": user_id})


async def verify(node, ident: Identity, text: str) -> tuple[int, dict]:
    return await post_json(
        node,
        "/auth/login?verify=true",
        {"user_id": ident.user_id, "signature": ident.sign_b64(text.encode())},
    )


@pytest_twisted.ensureDeferred
async def test_challenge_and_login_burst_are_shared_by_the_nodes(
    tmp_path, pg_url, redis_url
):
    # 7 login requests per IP (and per user id) for the whole cluster.
    limits = {"LOGIN_RATE_LIMIT": "0.001", "LOGIN_BURST_LIMIT": "7"}
    async with two_nodes(tmp_path, pg_url, redis_url, **limits) as (a, b):
        alice = Identity("alice")
        assert await register(a, alice) == 201  # IP: 1 of 7
        code, body = await challenge(a, "alice")  # 2
        assert code == 200, body
        issued = body["challenge"]
        code, body = await verify(b, alice, issued)  # 3
        assert code == 200, body
        assert body["token"]
        # Single use, cluster-wide: the same answer again is refused.
        code, body = await verify(b, alice, issued)  # 4
        assert code == 400, body
        code, body = await challenge(b, "alice")  # 5
        assert code == 200, body
        first = body["challenge"]
        assert (await verify(a, alice, first))[0] == 200  # 6
        assert (await verify(b, alice, first))[0] == 400  # 7: used on a
        # The IP's burst is spent on both nodes (alone, each would allow 7).
        assert (await challenge(a, "zed"))[0] == 429
        assert (await challenge(b, "zed"))[0] == 429


@pytest_twisted.ensureDeferred
async def test_connection_cap_and_message_rate_hold_across_nodes(
    tmp_path, pg_url, redis_url
):
    limits = {
        "DK_MAX_CONNECTIONS_PER_USER": "2",
        "MESSAGE_RATE_LIMIT": "0.001",
        "MESSAGE_BURST_LIMIT": "5",
    }
    async with two_nodes(tmp_path, pg_url, redis_url, **limits) as (a, b):
        bob, carol = Identity("bob"), Identity("carol")
        for ident in (bob, carol):
            assert await register(a, ident) == 201
        token = await login(a, bob)
        on_a = await connect(a, token)
        on_b = await connect(b, token)
        for node in (a, b):  # the cap (2) is full on both nodes
            try:
                extra = await connect(node, token)
            except HandshakeRefused as e:
                assert e.status_code == 429
            else:
                extra.close()
                raise AssertionError("a third connection passed a cap of 2")

        # Message rate: one bucket (burst 5) for both of bob's connections.
        for i in range(4):
            on_a.send_json(signed_frame(bob, "carol", f"a{i}"))
            on_b.send_json(signed_frame(bob, "carol", f"b{i}"))
        refused = []

        async def three_refusals() -> bool:
            for ws in (on_a, on_b):
                while ws._unread:
                    frame = await ws.recv()
                    assert frame["content"] == RATE_LIMITED, frame
                    refused.append(frame)
            return len(refused) >= 3

        await wait_for(three_refusals, "3 rate-limit replies", timeout=10.0)
        await on_a.expect_silence(0.3)
        await on_b.expect_silence(0.0)
        assert len(refused) == 3

        # A released slot is free on the other node.
        on_b.close()
        await on_b.wait_closed()

        async def third_connects():
            try:
                return await connect(a, token)
            except HandshakeRefused:
                return None

        again = await wait_for(third_connects, "a freed connection slot")
        # Carol gets the 5 stored messages, in each connection's order.
        carol_ws = await connect(b, await login(b, carol))
        got = [m["content"] for m in await carol_ws.recv_all(5)]
        await carol_ws.expect_silence(0.3)
        from_a = [c for c in got if c.startswith("a")]
        from_b = [c for c in got if c.startswith("b")]
        assert from_a == sorted(from_a) and from_b == sorted(from_b)
        assert len(got) == 5
        for ws in (on_a, again, carol_ws):
            ws.close()


@pytest_twisted.ensureDeferred
async def test_public_read_burst_is_shared_by_the_nodes(tmp_path, pg_url, redis_url):
    # 8: each node's start-up probe (GET /auth/check-userid/probe) takes one.
    limits = {"DK_PUBLIC_READ_RATE_LIMIT": "0.001", "DK_PUBLIC_READ_BURST_LIMIT": "8"}
    async with two_nodes(tmp_path, pg_url, redis_url, **limits) as (a, b):
        assert await register(a, Identity("dora")) == 201  # not a public read
        codes = []
        for node in (a, b, a, b, a, b):  # 6 reads for the IP, on either node
            codes.append((await get(node, "/active-users"))[0])
            codes.append((await get(node, "/auth/users/nobody"))[0])
        # 6 served (alone, each node would have served 6 of its own) ...
        assert codes[:6] == [200, 404, 200, 404, 200, 404], codes
        # ... then both refuse, with the JSON error.
        assert codes[6:] == [429] * 6, codes
        code, body = await get(b, "/trackers")
        assert code == 429 and body["error"] is True, body
