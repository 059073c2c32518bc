"""End-to-end tests of PROTOCOL.md's WebSocket section against the real server.

Every test talks to a real DkService (TLS, SQLite file) through real WSS
clients from ``tests.support.ws``; message crypto is checked with the
independent helpers of ``tests.support.envelope``.  The database is only ever
read here, to check what the server stored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from tests.support.client import Identity, get, register_and_login
from tests.support.db import db_rows
from tests.support.envelope import decrypt_with, rfc3339_unix_nanos
from tests.support.server import start_server, stop_server
from tests.support.waiting import sleep, wait_for
from tests.support.ws import (
    HandshakeRefused,
    broadcast_frame,
    connect,
    direct_frame,
    now_timestamp,
    signed_frame,
    upgrade_status,
    verify_frame,
)

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

RATE_LIMITED = "Rate limit exceeded. Please slow down."
ZERO_TIME = "0001-01-01T00:00:00Z"
MIB = 1024 * 1024
SYSTEM_FIELDS = {"id", "from", "to", "timestamp", "content", "status"}


# --- helpers --------------------------------------------------------------------------


def message_count(server) -> int:
    return db_rows(server, "SELECT COUNT(*) FROM messages")[0][0]


def status_of(server, message_id: int) -> str | None:
    rows = db_rows(server, "SELECT status FROM messages WHERE id = ?", message_id)
    return rows[0][0] if rows else None


def broadcast_recipients(server, message_id: int) -> set[str]:
    rows = db_rows(
        server,
        "SELECT user_id FROM broadcast_deliveries WHERE message_id = ?",
        message_id,
    )
    return {user_id for (user_id,) in rows}


async def presence(server) -> dict:
    code, body = await get(server, "/active-users")
    assert code == 200, body
    return body


async def is_online(server, user_id: str) -> bool:
    body = await presence(server)
    assert (user_id in body["online"]) != (user_id in body["offline"]), body
    return user_id in body["online"]


async def users(server, *names: str) -> list[tuple[Identity, str]]:
    """Register and log in each name; ``[(identity, token), ...]``."""
    return [
        (ident, await register_and_login(server, ident))
        for ident in (Identity(name) for name in names)
    ]


def jwt_secret(server) -> bytes:
    return bytes.fromhex(Path(server.config.jwt_secret_path).read_text().strip())


def crafted_token(server, user_id: str, exp: float) -> str:
    claims = {"user_id": user_id, "exp": int(exp), "iat": int(time.time())}
    return jwt.encode(claims, jwt_secret(server), algorithm="HS256")


def assert_system_error(frame: dict, user_id: str, content: str | None = None):
    """The exact shape of PROTOCOL.md's system error frame."""
    assert set(frame) == SYSTEM_FIELDS, frame
    assert frame["id"] == 0, frame
    assert frame["from"] == "system", frame
    assert frame["to"] == user_id, frame
    assert frame["timestamp"] == ZERO_TIME, frame
    assert frame["status"] == "error", frame
    assert isinstance(frame["content"], str) and frame["content"], frame
    if content is not None:
        assert frame["content"] == content, frame


async def close_and_wait(*clients) -> None:
    for client in clients:
        client.close()
    for client in clients:
        await client.wait_closed()


# --- 1. handshake ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_upgrade_without_valid_token_for_existing_user_is_refused_401(server):
    ((_, alice_token),) = await users(server, "alice")
    hour_ago = time.time() - 3600
    in_an_hour = time.time() + 3600

    # Control: a token crafted with the server's secret is accepted, so the
    # refusals below are about the claims and not about the crafting.
    assert (
        await upgrade_status(server, crafted_token(server, "alice", in_an_hour)) == 101
    )
    await wait_for(
        lambda: server.service.bus.connection_count() == 0, "probe connections to end"
    )

    refused = {
        "missing": None,
        "empty": "",
        "garbage": "garbage.not.ajwt",
        "expired": crafted_token(server, "alice", hour_ago),
        "unknown user": crafted_token(server, "mallory", in_an_hour),
        "wrong secret": jwt.encode(
            {"user_id": "alice", "exp": int(in_an_hour)}, b"x" * 32, algorithm="HS256"
        ),
    }
    for name, token in refused.items():
        assert await upgrade_status(server, token) == 401, name
    # The real client sees the same refusal.
    with pytest.raises(HandshakeRefused) as refusal:
        await connect(server, crafted_token(server, "alice", hour_ago))
    assert refusal.value.status_code == 401

    # Nothing was upgraded: no session, alice not online, still usable.
    assert server.service.bus.connection_count() == 0
    assert not await is_online(server, "alice")
    ws = await connect(server, alice_token)
    assert await is_online(server, "alice")
    await close_and_wait(ws)


@pytest_twisted.ensureDeferred
async def test_browser_origin_must_be_the_servers_own_https_origin(server):
    ((_, token),) = await users(server, "alice")
    port = server.https_port
    for origin in (
        "https://evil.example",
        f"http://localhost:{port}",  # not https
        f"https://localhost:{port + 1}",  # another port
        "null",
    ):
        assert await upgrade_status(server, token, origin=origin) == 403, origin
    with pytest.raises(HandshakeRefused) as refusal:
        await connect(server, token, origin="https://evil.example")
    assert refusal.value.status_code == 403
    assert server.service.bus.connection_count() == 0

    # The Host header the client sends is localhost:<port>: same origin.
    assert (
        await upgrade_status(server, token, origin=f"https://localhost:{port}") == 101
    )
    assert await upgrade_status(server, token) == 101  # native client, no Origin
    ws = await connect(server, token, origin=f"https://localhost:{port}")
    assert ws.opened
    await close_and_wait(ws)


@pytest_twisted.ensureDeferred
async def test_configured_allowed_origins_replace_the_default(backend_config):
    server = await start_server(
        backend_config(allowed_origins=("https://app.example",))
    )
    try:
        ((_, token),) = await users(server, "alice")
        assert await upgrade_status(server, token, origin="https://app.example") == 101
        assert await upgrade_status(server, token, origin="https://evil.example") == 403
        own = f"https://localhost:{server.https_port}"
        assert await upgrade_status(server, token, origin=own) == 403
        assert await upgrade_status(server, token) == 101
    finally:
        await stop_server(server)


# --- 2. live direct message -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_live_direct_message_is_relayed_exactly_and_marked_delivered(server):
    (alice, alice_token), (bob, bob_token) = await users(server, "alice", "bob")
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)

    timestamp = now_timestamp(offset_minutes=-180)
    assert timestamp.endswith("-03:00") and rfc3339_unix_nanos(timestamp) % 1000
    sent = direct_frame(
        alice, "bob", "hello bob, live ✓", bob.public_key_b64, timestamp
    )
    alice_ws.send_json(sent)

    got = await bob_ws.recv()
    assert isinstance(got["id"], int) and not isinstance(got["id"], bool)
    assert got["id"] > 0
    assert (got["from"], got["to"], got["content"]) == ("alice", "bob", sent["content"])
    assert got["signature"] == sent["signature"]
    assert rfc3339_unix_nanos(got["timestamp"]) == rfc3339_unix_nanos(timestamp)
    assert got["status"] == "pending"
    assert "is_broadcast" not in got and "is_forward_message" not in got
    assert verify_frame(got, alice.public_key_b64)
    assert decrypt_with(bob.signing_key, got["content"]) == "hello bob, live ✓"
    await alice_ws.expect_silence(0.2)  # the sender gets no echo

    await wait_for(
        lambda: status_of(server, got["id"]) == "delivered", "status delivered"
    )
    row = db_rows(
        server,
        "SELECT from_user, to_user, content, signature FROM messages WHERE id = ?",
        got["id"],
    )
    assert row == [("alice", "bob", sent["content"], sent["signature"])]
    await close_and_wait(alice_ws, bob_ws)


# --- 3. offline delivery --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_offline_recipient_gets_pending_messages_in_order_once(server):
    (alice, alice_token), (bob, bob_token) = await users(server, "alice", "bob")
    alice_ws = await connect(server, alice_token)
    texts = ["first", "second", "third"]
    sent = [
        direct_frame(
            alice, "bob", text, bob.public_key_b64, now_timestamp(offset_minutes=off)
        )
        for text, off in zip(texts, (-180, 330, 0), strict=True)
    ]
    for frame in sent:
        alice_ws.send_json(frame)
    await wait_for(
        lambda: (
            db_rows(
                server,
                "SELECT COUNT(*) FROM messages"
                " WHERE to_user = 'bob' AND status = 'pending'",
            )[0][0]
            == 3
        ),
        "three pending rows for bob",
    )

    bob_ws = await connect(server, bob_token)
    got = await bob_ws.recv_all(3)
    await bob_ws.expect_silence(0.3)
    ids = [frame["id"] for frame in got]
    assert ids == sorted(ids) and len(set(ids)) == 3, ids
    assert [decrypt_with(bob.signing_key, f["content"]) for f in got] == texts
    for frame, original in zip(got, sent, strict=True):
        assert (frame["from"], frame["to"]) == ("alice", "bob")
        assert frame["content"] == original["content"]
        assert rfc3339_unix_nanos(frame["timestamp"]) == rfc3339_unix_nanos(
            original["timestamp"]
        )
        assert verify_frame(frame, alice.public_key_b64)
    await wait_for(
        lambda: all(status_of(server, i) == "delivered" for i in ids),
        "backlog marked delivered",
    )
    await close_and_wait(bob_ws)

    again = await connect(server, bob_token)
    await again.expect_silence(0.4)
    await close_and_wait(again, alice_ws)


# --- 4. several connections of one user, presence -------------------------------------


@pytest_twisted.ensureDeferred
async def test_message_reaches_every_connection_and_presence_follows_them(server):
    (alice, alice_token), (bob, bob_token) = await users(server, "alice", "bob")
    assert not await is_online(server, "bob")
    alice_ws = await connect(server, alice_token)
    bob_1 = await connect(server, bob_token)
    bob_2 = await connect(server, bob_token)
    assert await is_online(server, "bob")

    alice_ws.send_json(direct_frame(alice, "bob", "to both", bob.public_key_b64))
    got_1, got_2 = await bob_1.recv(), await bob_2.recv()
    assert got_1 == got_2
    assert decrypt_with(bob.signing_key, got_1["content"]) == "to both"
    assert verify_frame(got_1, alice.public_key_b64)

    await close_and_wait(bob_1)
    await sleep(0.05)
    assert await is_online(server, "bob"), "one connection is still open"
    # The remaining connection still gets messages.
    alice_ws.send_json(direct_frame(alice, "bob", "to one", bob.public_key_b64))
    assert decrypt_with(bob.signing_key, (await bob_2.recv())["content"]) == "to one"

    await close_and_wait(bob_2)
    await wait_for(
        lambda: _offline(server, "bob"), "bob offline after both closed", timeout=3
    )
    assert await is_online(server, "alice")
    await close_and_wait(alice_ws)


async def _offline(server, user_id: str) -> bool:
    return not await is_online(server, user_id)


# --- 5. broadcasts --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_broadcast_reaches_each_user_exactly_once_live_or_offline(server):
    (_, carol_token), (_, dave_token), (erin, erin_token) = await users(
        server, "carol", "dave", "erin"
    )
    carol_ws = await connect(server, carol_token)
    erin_ws = await connect(server, erin_token)

    sent = broadcast_frame(erin, "hello everyone", now_timestamp(offset_minutes=330))
    erin_ws.send_json(sent)
    live = await carol_ws.recv()
    assert live["is_broadcast"] is True
    assert (live["from"], live["to"], live["content"]) == (
        "erin",
        "broadcast",
        "hello everyone",
    )
    assert isinstance(live["id"], int) and live["id"] > 0
    assert verify_frame(live, erin.public_key_b64)
    await erin_ws.expect_silence(0.2)  # the sender does not get its own broadcast
    message_id = live["id"]
    await wait_for(
        lambda: broadcast_recipients(server, message_id) == {"carol"},
        "carol's broadcast delivery row",
    )

    dave_ws = await connect(server, dave_token)
    offline = await dave_ws.recv()
    assert offline["id"] == message_id and offline["is_broadcast"] is True
    assert (offline["from"], offline["to"], offline["content"]) == (
        "erin",
        "broadcast",
        "hello everyone",
    )
    assert verify_frame(offline, erin.public_key_b64)
    await dave_ws.expect_silence(0.2)
    await wait_for(
        lambda: broadcast_recipients(server, message_id) == {"carol", "dave"},
        "dave's broadcast delivery row",
    )

    # Registered after the broadcast: never gets it.
    ((_, frank_token),) = await users(server, "frank")
    frank_ws = await connect(server, frank_token)
    await frank_ws.expect_silence(0.3)

    await close_and_wait(carol_ws, dave_ws, erin_ws)
    again = [await connect(server, t) for t in (carol_token, dave_token, erin_token)]
    for ws in again:
        await ws.expect_silence(0.3)
    assert broadcast_recipients(server, message_id) == {"carol", "dave"}
    assert db_rows(
        server,
        "SELECT COUNT(*), SUM(is_broadcast) FROM messages WHERE to_user = 'broadcast'",
    ) == [(1, 1)]
    await close_and_wait(frank_ws, *again)


# --- 6. rate limiting -----------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def limited_server(backend_config):
    running = await start_server(backend_config(message_rate=0.5, message_burst=3))
    yield running
    await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_rate_limit_drops_excess_frames_and_survives_reconnect(limited_server):
    server = limited_server
    (alice, alice_token), (bob, bob_token) = await users(server, "alice", "bob")
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)

    drained_at = time.monotonic()
    for i in range(5):
        alice_ws.send_json(direct_frame(alice, "bob", f"m{i}", bob.public_key_b64))
    for frame in await alice_ws.recv_all(2):
        assert_system_error(frame, "alice", RATE_LIMITED)
    got = await bob_ws.recv_all(3)
    assert [decrypt_with(bob.signing_key, f["content"]) for f in got] == [
        "m0",
        "m1",
        "m2",
    ]
    await bob_ws.expect_silence(0.2)
    await alice_ws.expect_silence(0.05)
    assert message_count(server) == 3

    # Reconnecting does not refill the bucket.
    await close_and_wait(alice_ws)
    alice_ws = await connect(server, alice_token)
    alice_ws.send_json(direct_frame(alice, "bob", "m5", bob.public_key_b64))
    assert_system_error(await alice_ws.recv(), "alice", RATE_LIMITED)
    # At 0.5 token/s a whole token takes 2 s: the check above is meaningful
    # only if it ran sooner than that.
    assert time.monotonic() - drained_at < 1.9
    await bob_ws.expect_silence(0.2)
    assert message_count(server) == 3
    await close_and_wait(alice_ws, bob_ws)


@pytest_twisted.ensureDeferred
async def test_rate_limit_bucket_is_shared_by_all_connections_of_a_user(
    limited_server,
):
    server = limited_server
    (alice, alice_token), (bob, bob_token) = await users(server, "alice", "bob")
    first = await connect(server, alice_token)
    second = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)

    for i in range(2):
        first.send_json(direct_frame(alice, "bob", f"a{i}", bob.public_key_b64))
    await bob_ws.recv_all(2)
    for i in range(2):
        second.send_json(direct_frame(alice, "bob", f"b{i}", bob.public_key_b64))
    got = await bob_ws.recv()
    assert decrypt_with(bob.signing_key, got["content"]) == "b0"
    assert_system_error(await second.recv(), "alice", RATE_LIMITED)
    await bob_ws.expect_silence(0.2)
    await first.expect_silence(0.05)
    assert message_count(server) == 3
    await close_and_wait(first, second, bob_ws)


# --- 7. spoofed sender ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_spoofed_sender_is_rejected_not_stored_not_relayed(server):
    (alice, alice_token), (bob, bob_token), _ = await users(
        server, "alice", "bob", "carol"
    )
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)

    spoofed = direct_frame(alice, "bob", "I am carol", bob.public_key_b64)
    spoofed["from"] = "carol"
    alice_ws.send_json(spoofed)
    reply = await alice_ws.recv()
    assert_system_error(reply, "alice")
    assert reply["content"] != RATE_LIMITED
    spoofed_broadcast = broadcast_frame(alice, "carol says hi")
    spoofed_broadcast["from"] = "carol"
    alice_ws.send_json(spoofed_broadcast)
    assert_system_error(await alice_ws.recv(), "alice")

    await bob_ws.expect_silence(0.3)
    assert message_count(server) == 0

    # The connection stays usable for honest messages.
    alice_ws.send_json(direct_frame(alice, "bob", "I am alice", bob.public_key_b64))
    got = await bob_ws.recv()
    assert got["from"] == "alice"
    assert decrypt_with(bob.signing_key, got["content"]) == "I am alice"
    assert message_count(server) == 1
    await close_and_wait(alice_ws, bob_ws)


# --- 8. malformed frames, oversize frames ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_malformed_frames_get_system_errors_and_connection_stays_usable(
    lenient_server,
):
    server = lenient_server
    (alice, alice_token), (bob, bob_token) = await users(server, "alice", "bob")
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)

    ok_ts = now_timestamp()
    bad_text = {
        "not JSON": "{not json",
        "JSON array": json.dumps([{"to": "bob", "content": "x"}]),
        "JSON string": json.dumps("hello"),
        "missing to": json.dumps({"content": "x", "timestamp": ok_ts}),
        "empty to": json.dumps({"to": "", "content": "x"}),
        "non-string to": json.dumps({"to": 7, "content": "x"}),
        "non-string content": json.dumps({"to": "bob", "content": 123}),
        "missing content": json.dumps({"to": "bob"}),
        "bad timestamp": json.dumps({"to": "bob", "content": "x", "timestamp": "now"}),
        "impossible date": json.dumps(
            {"to": "bob", "content": "x", "timestamp": "2025-02-30T00:00:00Z"}
        ),
        "timestamp without zone": json.dumps(
            {"to": "bob", "content": "x", "timestamp": "2025-01-01T00:00:00.5"}
        ),
        "non-string timestamp": json.dumps(
            {"to": "bob", "content": "x", "timestamp": 1735689600}
        ),
        "unknown recipient": json.dumps(
            {"to": "nobody", "content": "x", "timestamp": ok_ts}
        ),
    }
    for name, text in bad_text.items():
        alice_ws.send_text(text)
        reply = await alice_ws.recv()
        assert_system_error(reply, "alice")
        assert reply["content"] != RATE_LIMITED, name
        assert alice_ws.opened and not alice_ws.closed, name

    alice_ws.send_bytes(json.dumps({"to": "bob", "content": "binary"}).encode())
    assert_system_error(await alice_ws.recv(), "alice")

    await bob_ws.expect_silence(0.2)
    assert message_count(server) == 0
    assert not alice_ws.closed

    alice_ws.send_json(direct_frame(alice, "bob", "still here", bob.public_key_b64))
    got = await bob_ws.recv()
    assert decrypt_with(bob.signing_key, got["content"]) == "still here"
    assert verify_frame(got, alice.public_key_b64)
    await alice_ws.expect_silence(0.1)
    await close_and_wait(alice_ws, bob_ws)


@pytest_twisted.ensureDeferred
async def test_frame_over_one_mib_closes_1009_and_others_are_unaffected(server):
    (alice, alice_token), (bob, bob_token), (carol, carol_token) = await users(
        server, "alice", "bob", "carol"
    )
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)
    carol_ws = await connect(server, carol_token)

    # Exactly 1 MiB is allowed.
    skeleton = json.dumps({"to": "bob", "content": ""})
    exact = json.dumps({"to": "bob", "content": "a" * (MIB - len(skeleton))})
    assert len(exact.encode()) == MIB
    alice_ws.send_text(exact)
    got = await bob_ws.recv()
    assert got["from"] == "alice" and len(got["content"]) == MIB - len(skeleton)

    alice_ws.send_text(json.dumps({"to": "bob", "content": "b" * MIB}))
    code, _ = await alice_ws.wait_closed()
    assert code == 1009

    await bob_ws.expect_silence(0.2)
    assert not bob_ws.closed and not carol_ws.closed
    carol_ws.send_json(
        direct_frame(carol, "bob", "after the big one", bob.public_key_b64)
    )
    got = await bob_ws.recv()
    assert decrypt_with(bob.signing_key, got["content"]) == "after the big one"
    assert message_count(server) == 2
    # The server still accepts the same user again.
    alice_again = await connect(server, alice_token)
    alice_again.send_json(direct_frame(alice, "bob", "back", bob.public_key_b64))
    assert decrypt_with(bob.signing_key, (await bob_ws.recv())["content"]) == "back"
    await close_and_wait(alice_again, bob_ws, carol_ws)


# --- 9. server receive time -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_frame_without_timestamp_gets_server_receive_time(server):
    (_, alice_token), (_, bob_token), (_, carol_token), (_, dave_token) = await users(
        server, "alice", "bob", "carol", "dave"
    )
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)
    carol_ws = await connect(server, carol_token)

    before = time.time_ns()
    alice_ws.send_json({"to": "bob", "content": "no time"})
    live = await bob_ws.recv()
    alice_ws.send_json({"from": "alice", "to": "broadcast", "content": "no time"})
    live_broadcast = await carol_ws.recv()
    after = time.time_ns()

    for frame in (live, live_broadcast):
        assert frame["from"] == "alice" and frame["content"] == "no time"
        nanos = rfc3339_unix_nanos(frame["timestamp"])  # valid RFC 3339
        assert before <= nanos <= after, (frame["timestamp"], before, after)

    # Offline, from storage: the same instant.
    dave_ws = await connect(server, dave_token)
    stored = await dave_ws.recv()
    assert stored["id"] == live_broadcast["id"]
    assert rfc3339_unix_nanos(stored["timestamp"]) == rfc3339_unix_nanos(
        live_broadcast["timestamp"]
    )
    await close_and_wait(alice_ws, bob_ws, carol_ws, dave_ws)


# --- 10. slow consumer ----------------------------------------------------------------

SLOW_CONTENT = 200 * 1024
SLOW_MAX_MESSAGES = 1200


@pytest_twisted.async_yield_fixture
async def unlimited_server(backend_config):
    running = await start_server(backend_config(message_rate=1e6, message_burst=10**6))
    yield running
    await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_slow_reader_is_closed_4008_and_loses_no_message(unlimited_server):
    """The reader wakes up soon after the server gave up on it: it reads the
    4008 close, reconnects, and gets every message it had not received."""
    await _slow_reader_scenario(unlimited_server, stall_after_close=0.0)


@pytest_twisted.ensureDeferred
async def test_slow_reader_stalled_past_the_close_loses_no_message(
    unlimited_server,
):
    """The reader stays stalled until the server dropped it, then reconnects:
    whatever it never received must still be pending (PROTOCOL: a recipient
    whose connection is too slow keeps it pending; it is never lost)."""
    await _slow_reader_scenario(unlimited_server, stall_after_close=2.5)


async def _slow_reader_scenario(server, stall_after_close: float) -> None:
    started = time.monotonic()
    (_, alice_token), (_, bob_token) = await users(server, "alice", "bob")
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token, max_size=4 * MIB)
    (bob_conn,) = server.service.bus.connections("bob")
    bob_ws.pause_reading()

    filler = "x" * SLOW_CONTENT
    sent = 0
    while bob_conn.localCloseCode is None and sent < SLOW_MAX_MESSAGES:
        assert time.monotonic() - started < 12, f"server never gave up ({sent} sent)"
        # Keep only a few frames in flight, so we stop soon after the close.
        if sent - message_count(server) < 16:
            for _ in range(4):
                alice_ws.send_json({"to": "bob", "content": f"{sent:06d}|{filler}"})
                sent += 1
        await sleep(0.002)
    assert bob_conn.localCloseCode == 4008, f"not closed after {sent} messages"

    if stall_after_close:
        await sleep(stall_after_close)
        assert not server.service.bus.is_online("bob"), "stalled reader not dropped"
    # The reader wakes up: it reads whatever reached it, then the close.
    bob_ws.resume_reading()
    code, _ = await bob_ws.wait_closed(timeout=10)
    if not stall_after_close:
        assert code == 4008
    first = [f for f in bob_ws.received if isinstance(f, dict)]
    first_ids = [f["id"] for f in first]
    assert len(first_ids) == len(set(first_ids)), "duplicate on one connection"

    await wait_for(lambda: message_count(server) == sent, "all messages stored")
    assert alice_ws.received == [], alice_ws.received[:1]
    stored = dict(
        db_rows(server, "SELECT id, content FROM messages WHERE to_user = 'bob'")
    )
    assert len(stored) == sent

    # A fresh connection gets every stored message the first one did not.
    bob_again = await connect(server, bob_token, max_size=4 * MIB)
    missing = set(stored) - set(first_ids)
    second: list[dict] = []
    try:
        while missing - {f["id"] for f in second}:
            second.append(await bob_again.recv(timeout=2))
    except TimeoutError:
        pass  # judged below
    await bob_again.expect_silence(0.2)
    second_ids = [f["id"] for f in second]
    assert len(second_ids) == len(set(second_ids)), "duplicate on one connection"

    everything = first + second
    lost = sorted(set(stored) - {f["id"] for f in everything})
    assert not lost, (
        f"{len(lost)} of {sent} messages lost (ids {lost[:5]}...), stored as "
        + repr(
            db_rows(
                server,
                "SELECT status, COUNT(*) FROM messages WHERE id IN (%s)"
                " GROUP BY status" % ",".join(map(str, lost)),
            )
        )
    )
    for frame in everything:  # a repeat carries the same id and message
        assert frame["content"] == stored[frame["id"]]
        assert frame["from"] == "alice" and frame["to"] == "bob"
    await wait_for(
        lambda: (
            db_rows(
                server,
                "SELECT COUNT(*) FROM messages WHERE to_user = 'bob'"
                " AND status != 'delivered'",
            )[0][0]
            == 0
        ),
        "all delivered",
    )
    assert time.monotonic() - started < 20
    await close_and_wait(alice_ws, bob_again)


# --- 11. keep-alive -------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def fast_ping_server(backend_config):
    running = await start_server(
        backend_config(ws_ping_interval=0.5, ws_ping_timeout=1.0)
    )
    yield running
    await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_keepalive_drops_silent_peer_and_keeps_responsive_one(
    fast_ping_server,
):
    server = fast_ping_server
    (_, alive_token), (_, mute_token) = await users(server, "alive", "mute")
    alive_ws = await connect(server, alive_token)
    mute_ws = await connect(server, mute_token)
    mute_ws.pause_reading()  # answers no ping from now on
    started = time.monotonic()

    await wait_for(lambda: _offline(server, "mute"), "mute peer dropped", timeout=3)
    assert time.monotonic() - started <= 3.0
    # The responsive peer has answered pings for 2 s and is still here.
    await sleep(max(0.0, 2.0 - (time.monotonic() - started)))
    assert await is_online(server, "alive")
    assert not alive_ws.closed

    mute_ws.resume_reading()
    await mute_ws.wait_closed(timeout=3)
    await close_and_wait(alive_ws)


@pytest_twisted.ensureDeferred
async def test_peer_dropped_by_keepalive_loses_no_message(backend_config):
    server = await start_server(
        backend_config(
            ws_ping_interval=0.5,
            ws_ping_timeout=1.0,
            message_rate=1e6,
            message_burst=10**6,
        )
    )
    try:
        (_, alice_token), (_, bob_token) = await users(server, "alice", "bob")
        alice_ws = await connect(server, alice_token)
        bob_ws = await connect(server, bob_token, max_size=4 * MIB)
        bob_ws.pause_reading()  # e.g. a laptop lid closed
        # More than the socket buffers hold, far less than the 4008 limit.
        count, filler = 48, "k" * (200 * 1024)
        for i in range(count):
            alice_ws.send_json({"to": "bob", "content": f"{i:03d}|{filler}"})
        await wait_for(lambda: message_count(server) == count, "messages stored")
        await wait_for(lambda: _offline(server, "bob"), "bob dropped", timeout=4)

        bob_ws.resume_reading()  # it wakes up: reads what reached it, if anything
        await bob_ws.wait_closed(timeout=5)
        got = {f["id"] for f in bob_ws.received if isinstance(f, dict)}
        bob_again = await connect(server, bob_token, max_size=4 * MIB)
        try:
            while len(got) < count:
                got.add((await bob_again.recv(timeout=1))["id"])
        except TimeoutError:
            pass
        stored = {i for (i,) in db_rows(server, "SELECT id FROM messages")}
        lost = sorted(stored - got)
        assert not lost, f"{len(lost)} of {count} lost: " + repr(
            db_rows(
                server,
                "SELECT status, COUNT(*) FROM messages WHERE id IN (%s)"
                " GROUP BY status" % ",".join(map(str, lost)),
            )
        )
        await close_and_wait(alice_ws, bob_again)
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_server_answers_client_pings(server):
    ((_, token),) = await users(server, "alice")
    ws = await connect(server, token)
    pong: Deferred = Deferred()
    ws.protocol.onPong = pong.callback
    ws.protocol.sendPing(b"are you there")
    pong.addTimeout(3, reactor)
    assert await pong == b"are you there"
    await close_and_wait(ws)


# --- more edges -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_fragmented_message_over_one_mib_closes_1009(server):
    (_, alice_token), (_, bob_token) = await users(server, "alice", "bob")
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)
    payload = json.dumps({"to": "bob", "content": "f" * MIB}).encode()
    alice_ws.protocol.sendMessage(payload, isBinary=False, fragmentSize=256 * 1024)
    code, _ = await alice_ws.wait_closed()
    assert code == 1009
    await bob_ws.expect_silence(0.2)
    assert message_count(server) == 0 and not bob_ws.closed
    await close_and_wait(bob_ws)


@pytest_twisted.ensureDeferred
async def test_aborted_connection_leaves_user_offline(server):
    ((_, token),) = await users(server, "alice")
    ws = await connect(server, token)
    assert await is_online(server, "alice")
    ws.abort()
    await wait_for(lambda: _offline(server, "alice"), "alice offline after abort")
    assert server.service.bus.connection_count() == 0


@pytest_twisted.ensureDeferred
async def test_live_messages_keep_the_senders_order(lenient_server):
    server = lenient_server
    (alice, alice_token), (_, bob_token) = await users(server, "alice", "bob")
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)
    for i in range(100):
        alice_ws.send_json(signed_frame(alice, "bob", f"n{i:03d}"))
    got = await bob_ws.recv_all(100)
    assert [f["content"] for f in got] == [f"n{i:03d}" for i in range(100)]
    ids = [f["id"] for f in got]
    assert ids == sorted(ids) and len(set(ids)) == 100
    assert all(verify_frame(f, alice.public_key_b64) for f in got)
    await close_and_wait(alice_ws, bob_ws)


@pytest_twisted.ensureDeferred
async def test_large_backlog_then_live_messages_each_arrive_once_in_order(
    lenient_server,
):
    """More pending messages than one backlog page (500), broadcasts after the
    direct messages, and live messages sent while the backlog streams."""
    server = lenient_server
    (alice, alice_token), (_, bob_token), (erin, erin_token) = await users(
        server, "alice", "bob", "erin"
    )
    alice_ws = await connect(server, alice_token)
    erin_ws = await connect(server, erin_token)
    erin_ws.send_json(broadcast_frame(erin, "early broadcast"))
    backlog = 1100
    for i in range(backlog):
        alice_ws.send_json(signed_frame(alice, "bob", f"old{i:04d}"))
    erin_ws.send_json(broadcast_frame(erin, "late broadcast"))
    await wait_for(
        lambda: message_count(server) == backlog + 2, "backlog stored", timeout=10
    )

    bob_ws = await connect(server, bob_token)
    live = 50
    for i in range(live):
        alice_ws.send_json(signed_frame(alice, "bob", f"new{i:04d}"))
    total = backlog + 2 + live
    got = await bob_ws.recv_all(total)
    await bob_ws.expect_silence(0.3)
    ids = [f["id"] for f in got]
    assert len(set(ids)) == total, "a message arrived twice"

    directs = [f for f in got if not f.get("is_broadcast")]
    assert [f["content"] for f in directs] == [
        *(f"old{i:04d}" for i in range(backlog)),
        *(f"new{i:04d}" for i in range(live)),
    ]
    assert [f["id"] for f in directs] == sorted(f["id"] for f in directs)
    # The stored part: pending direct messages first, then the broadcasts
    # (a live message stored while the backlog was read may be part of it).
    contents = [f["content"] for f in got]
    early, late = contents.index("early broadcast"), contents.index("late broadcast")
    assert contents.index(f"old{backlog - 1:04d}") < early < late
    assert all(verify_frame(f, alice.public_key_b64) for f in directs)
    await close_and_wait(alice_ws, erin_ws, bob_ws)


@pytest_twisted.ensureDeferred
async def test_timestamp_with_trailing_newline_is_rejected(server):
    (_, alice_token), (_, bob_token) = await users(server, "alice", "bob")
    alice_ws = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)
    alice_ws.send_json(
        {"to": "bob", "content": "x", "timestamp": now_timestamp() + "\n"}
    )
    assert_system_error(await alice_ws.recv(timeout=1), "alice")
    await bob_ws.expect_silence(0.2)
    assert message_count(server) == 0
    await close_and_wait(alice_ws, bob_ws)


@pytest_twisted.ensureDeferred
async def test_unusual_content_round_trips_exactly_live_and_stored(server):
    (_, carol_token), (_, dave_token), (erin, erin_token) = await users(
        server, "carol", "dave", "erin"
    )
    carol_ws = await connect(server, carol_token)
    erin_ws = await connect(server, erin_token)
    content = 'nul\x00 emoji \U0001f600 sep\u2028 "quote" back\\slash <&> \t\n'
    sent = broadcast_frame(erin, content, now_timestamp(offset_minutes=-570))
    erin_ws.send_json(sent)
    live = await carol_ws.recv()
    await wait_for(lambda: broadcast_recipients(server, live["id"]), "delivery row")
    dave_ws = await connect(server, dave_token)
    stored = await dave_ws.recv()
    for frame in (live, stored):
        assert frame["content"] == content
        assert frame["signature"] == sent["signature"]
        assert verify_frame(frame, erin.public_key_b64)
    await close_and_wait(carol_ws, erin_ws, dave_ws)
