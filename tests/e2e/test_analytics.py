"""End to end: usage analytics (/stats, sessions, message events) and /metrics.

/stats is for administrators (``admin_users``) and is computed from the
``sessions``, ``message_events`` and ``messages`` tables
(dkserver/store/analytics.py) plus the live connection registry.  /metrics is
Prometheus text, open to loopback clients.
"""

from __future__ import annotations

import re
import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from dkserver.store import Store
from tests.support.client import (
    Identity,
    get,
    login,
    post_json,
    register,
    register_and_login,
)
from tests.support.db import db_rows as support_db_rows
from tests.support.metrics import sample, scrape
from tests.support.server import start_server, stop_server
from tests.support.waiting import sleep
from tests.support.ws import (
    broadcast_frame,
    connect,
    direct_frame,
    upgrade_status,
)

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

STORAGE_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,9})?\+00:00$")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def db_rows(server, sql: str, args=()) -> list[tuple]:
    return support_db_rows(server, sql, *args)


async def eventually(check, timeout: float = 3.0):
    """Poll ``check()`` (sync) until it returns a truthy value; return it."""
    deadline = reactor.seconds() + timeout
    while True:
        value = check()
        if value or reactor.seconds() > deadline:
            return value
        await sleep(0.05)


def utc_hour() -> int:
    return time.gmtime().tm_hour


@pytest_twisted.async_yield_fixture
async def admin_server(backend_config):
    running = await start_server(backend_config(admin_users=frozenset({"root"})))
    yield running
    await stop_server(running)


async def stats(server, token: str) -> dict:
    code, body = await get(server, "/stats", auth(token))
    assert code == 200, body
    return body


def assert_json_error(code: int, body, status: int) -> None:
    assert code == status, (code, body)
    assert isinstance(body, dict) and body.get("error") is True, body


# -- /stats ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stats_needs_a_token(admin_server):
    assert_json_error(*await get(admin_server, "/stats"), 401)
    assert_json_error(*await get(admin_server, "/stats", auth("not-a-jwt")), 401)


@pytest_twisted.ensureDeferred
async def test_stats_forbidden_for_non_admin(admin_server):
    token = await register_and_login(admin_server, Identity("alice"))
    assert_json_error(*await get(admin_server, "/stats", auth(token)), 403)


@pytest_twisted.ensureDeferred
async def test_stats_forbidden_for_everyone_without_configured_admins(server):
    # The default configuration names no administrator; "root" is nobody special.
    token = await register_and_login(server, Identity("root"))
    assert_json_error(*await get(server, "/stats", auth(token)), 403)


@pytest_twisted.ensureDeferred
async def test_stats_of_an_unused_server_are_zero(admin_server):
    root = await register_and_login(admin_server, Identity("root"))
    body = await stats(admin_server, root)
    zero = {"direct": 0, "broadcast": 0, "total": 0}
    assert body["daily_active_users"] == 0
    assert body["weekly_active_users"] == 0
    assert body["messages"] == {"all_time": zero, "last_24h": zero}
    assert body["sessions"]["count"] == 0
    assert body["sessions"]["open"] == 0
    assert body["peak_hour"] is None
    assert body["live"] == {"connections": 0, "online_users": 0}


@pytest_twisted.ensureDeferred
async def test_stats_reflect_sessions_and_messages(admin_server):
    server = admin_server
    root = await register_and_login(server, Identity("root"))
    alice, bob = Identity("alice"), Identity("bob")
    alice_token = await register_and_login(server, alice)
    bob_token = await register_and_login(server, bob)
    await register_and_login(server, Identity("carol"))  # never connects

    hour_before = utc_hour()
    alice_1 = await connect(server, alice_token)
    alice_2 = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)

    for i in range(2):
        alice_1.send_json(direct_frame(alice, "bob", f"d{i}", bob.public_key_b64))
    alice_2.send_json(broadcast_frame(alice, "hello all"))
    bob_ws.send_json(direct_frame(bob, "alice", "back", alice.public_key_b64))
    # Rejected frames are not messages: unknown recipient, spoofed sender.
    bob_ws.send_json(direct_frame(bob, "nobody", "x", alice.public_key_b64))
    bob_ws.send_json(direct_frame(alice, "alice", "spoof", alice.public_key_b64))

    got = await bob_ws.recv_all(5)
    relayed = [m for m in got if m["from"] == "alice"]
    errors = [m for m in got if m["from"] == "system"]
    assert len(relayed) == 3 and len(errors) == 2, got
    await alice_1.recv()  # bob's direct message, on both of alice's devices
    await alice_2.recv()

    body = await stats(server, root)
    hour_after = utc_hour()
    counts = {"direct": 3, "broadcast": 1, "total": 4}
    assert body["messages"] == {"all_time": counts, "last_24h": counts}
    assert body["daily_active_users"] == 2
    assert body["weekly_active_users"] == 2
    assert body["sessions"]["count"] == 3
    assert body["sessions"]["open"] == 3
    assert body["live"] == {"connections": 3, "online_users": 2}
    assert body["peak_hour"] in {hour_before, hour_after}

    for ws in (alice_1, alice_2, bob_ws):
        ws.close()
        await ws.wait_closed()

    async def closed_stats():
        body = await stats(server, root)
        return body if body["sessions"]["open"] == 0 else None

    deadline = reactor.seconds() + 3.0
    while (body := await closed_stats()) is None and reactor.seconds() < deadline:
        await sleep(0.05)
    assert body is not None, "sessions still open after every client closed"
    assert body["sessions"]["count"] == 3
    assert body["sessions"]["max_duration_s"] is not None
    assert body["sessions"]["p50_duration_s"] is not None
    assert body["sessions"]["avg_duration_s"] is not None
    assert body["live"] == {"connections": 0, "online_users": 0}
    # Ended sessions still count as active today.
    assert body["daily_active_users"] == 2
    assert body["messages"]["all_time"] == counts


# -- sessions and message_events rows --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_row_written_on_connect_and_closed_on_disconnect(server):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)

    def open_rows():
        return db_rows(
            server,
            "SELECT session_id, user_id, start_time, end_time, duration FROM sessions",
        )

    rows = await eventually(open_rows)
    assert len(rows) == 1, rows
    session_id, user_id, start, end, duration = rows[0]
    assert user_id == "alice"
    assert session_id
    assert STORAGE_TIME.match(start), start
    assert (end, duration) == (None, None)

    await sleep(1.1)
    ws.close()
    await ws.wait_closed()

    def closed_rows():
        rows = open_rows()
        return rows if rows and rows[0][3] is not None else None

    rows = await eventually(closed_rows)
    assert rows, "session not closed after disconnect"
    assert rows[0][:3] == (session_id, "alice", start)
    end, duration = rows[0][3], rows[0][4]
    assert STORAGE_TIME.match(end), end
    assert end > start
    assert duration in (1, 2), duration

    # A second connection is a second session.
    ws = await connect(server, token)
    rows = await eventually(lambda: len(open_rows()) == 2 and open_rows())
    assert len(rows) == 2
    assert len({r[0] for r in rows}) == 2
    ws.abort()  # dropped without a close handshake: still ended
    rows = await eventually(
        lambda: all(r[3] is not None for r in open_rows()) and open_rows()
    )
    assert rows and all(r[3] is not None and r[4] is not None for r in rows), rows


@pytest_twisted.ensureDeferred
async def test_message_event_per_accepted_message_with_its_session(server):
    alice, bob = Identity("alice"), Identity("bob")
    alice_token = await register_and_login(server, alice)
    bob_token = await register_and_login(server, bob)
    alice_1 = await connect(server, alice_token)
    alice_2 = await connect(server, alice_token)
    bob_ws = await connect(server, bob_token)

    alice_1.send_json(direct_frame(alice, "bob", "one", bob.public_key_b64))
    alice_1.send_json(broadcast_frame(alice, "to everyone"))
    alice_2.send_json(direct_frame(alice, "bob", "two", bob.public_key_b64))
    assert len(await bob_ws.recv_all(3)) == 3

    # Not accepted, so no events: unknown recipient, bad JSON, spoofed sender,
    # and a forward answer with nothing waiting.
    alice_1.send_json(direct_frame(alice, "nobody", "x", bob.public_key_b64))
    alice_1.send_text("{not json")
    alice_1.send_json(direct_frame(bob, "alice", "spoof", alice.public_key_b64))
    alice_1.send_json(
        {"to": "alice", "is_forward_message": True, "content": '{"message": "a"}'}
    )
    errors = await alice_1.recv_all(4)
    assert all(m["from"] == "system" for m in errors), errors
    await bob_ws.expect_silence(0.1)

    sessions = dict(
        db_rows(server, "SELECT session_id, user_id FROM sessions ORDER BY start_time")
    )
    events = db_rows(
        server,
        "SELECT session_id, user_id, is_broadcast, timestamp FROM message_events"
        " ORDER BY id",
    )
    assert sorted((user, flag) for _, user, flag, _ in events) == [
        ("alice", 0),
        ("alice", 0),
        ("alice", 1),
    ]
    for session_id, _, _, stamp in events:
        assert sessions[session_id] == "alice"
        assert STORAGE_TIME.match(stamp), stamp
    # Each event names the session (connection) the message came from.
    by_session: dict[str, list[int]] = {}
    for session_id, _, flag, _ in events:
        by_session.setdefault(session_id, []).append(flag)
    assert sorted(by_session.values()) == [[0], [0, 1]]
    assert db_rows(server, "SELECT COUNT(*) FROM messages") == [(3,)]


# -- /metrics ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_metrics_count_connections_messages_and_refusals(backend_config):
    # Small burst, negligible refill: the sixth frame in a row is rate-limited.
    server = await start_server(backend_config(message_burst=5, message_rate=0.01))
    try:
        text = await scrape(server)
        for name in (
            "dkserver_websocket_connections",
            "dkserver_online_users",
        ):
            assert sample(text, name) == 0.0, name
        assert sample(text, "dkserver_rate_limited_frames_total") == 0.0
        assert "dkserver_auth_failures_total" in text
        assert "dkserver_refused_upgrades_total" in text

        alice, bob = Identity("alice"), Identity("bob")
        alice_token = await register_and_login(server, alice)
        bob_token = await register_and_login(server, bob)
        alice_ws = await connect(server, alice_token)
        alice_2 = await connect(server, alice_token)
        bob_ws = await connect(server, bob_token)

        for i in range(2):
            alice_ws.send_json(direct_frame(alice, "bob", f"m{i}", bob.public_key_b64))
        alice_ws.send_json(broadcast_frame(alice, "hi"))
        assert len(await bob_ws.recv_all(3)) == 3

        # Bob: five frames take the burst (all refused as bad JSON), two more
        # find the bucket empty.
        for _ in range(7):
            bob_ws.send_text("not json")
        replies = await bob_ws.recv_all(7)
        assert [m["content"] for m in replies].count(
            "Rate limit exceeded. Please slow down."
        ) == 2

        # A bad bearer token, a failed login, a refused upgrade.
        assert (await get(server, "/user/descriptions/x"))[0] == 200
        code, _ = await post_json(
            server, "/user/descriptions", ["x"], auth("not-a-jwt")
        )
        assert code == 401
        code, body = await post_json(server, "/auth/login", {"user_id": "alice"})
        assert code == 200
        code, _ = await post_json(
            server,
            "/auth/login?verify=true",
            {"user_id": "alice", "signature": bob.sign_b64(body["challenge"].encode())},
        )
        assert code == 401
        assert await upgrade_status(server, "bad") == 401

        text = await scrape(server)
        assert 'dkserver_messages_total{kind="direct"} 2.0' in text
        assert sample(text, "dkserver_messages_total", kind="direct") == 2.0
        assert sample(text, "dkserver_messages_total", kind="broadcast") == 1.0
        assert sample(text, "dkserver_websocket_connections") == 3.0
        assert sample(text, "dkserver_online_users") == 2.0
        assert sample(text, "dkserver_rate_limited_frames_total") == 2.0
        assert sample(text, "dkserver_auth_failures_total", kind="login") == 1.0
        # The bad bearer token and the upgrade's bad token.
        assert sample(text, "dkserver_auth_failures_total", kind="token") == 2.0
        assert sample(text, "dkserver_refused_upgrades_total", reason="token") == 1.0

        for ws in (alice_ws, alice_2, bob_ws):
            ws.close()
            await ws.wait_closed()

        async def gauge_zero():
            text = await scrape(server)
            return sample(text, "dkserver_websocket_connections") == 0.0

        deadline = reactor.seconds() + 3.0
        while not await gauge_zero() and reactor.seconds() < deadline:
            await sleep(0.05)
        text = await scrape(server)
        assert sample(text, "dkserver_websocket_connections") == 0.0
        assert sample(text, "dkserver_online_users") == 0.0
        # Counters do not go down.
        assert sample(text, "dkserver_messages_total", kind="direct") == 2.0
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_metrics_unchanged_by_successful_register_and_login(server):
    """Registering and logging in alone moves no message or failure counter."""
    alice = Identity("alice")
    assert await register(server, alice) == 201
    await login(server, alice)
    text = await scrape(server)
    assert sample(text, "dkserver_messages_total", kind="direct") in (None, 0.0)
    assert sample(text, "dkserver_auth_failures_total", kind="login") in (None, 0.0)
    assert sample(text, "dkserver_auth_failures_total", kind="token") in (None, 0.0)
    assert sample(text, "dkserver_websocket_connections") == 0.0


@pytest_twisted.ensureDeferred
async def test_a_single_process_closes_every_session_left_open_and_names_itself(
    db_target, backend_config
):
    """Without a cluster the process is the only one: sessions left open by
    any node id (its own under another port, or none before version 6) end
    at its start; its own sessions carry its node id."""
    store = await Store.open(db_target, reactor)
    try:
        await store.users.create("ghost", "ghost", "k")
        long_ago = time.time_ns() - 3600 * 10**9
        await store.analytics.start_session("old-port", "ghost", long_ago, "h:1")
        await store.analytics.start_session("legacy", "ghost", long_ago)
    finally:
        await store.close()
    server = await start_server(
        backend_config(node_id="h:2", admin_users=frozenset({"root"}))
    )
    try:
        open_rows = "SELECT session_id FROM sessions WHERE end_time IS NULL"
        assert db_rows(server, open_rows) == []
        root = await register_and_login(server, Identity("root"))
        ws = await connect(server, root)
        assert await eventually(lambda: db_rows(server, open_rows))
        assert db_rows(
            server, "SELECT node_id FROM sessions WHERE end_time IS NULL"
        ) == [("h:2",)]
        body = await stats(server, root)
        assert body["node"] == "h:2"
        assert sample(await scrape(server), "dkserver_node_info", node_id="h:2") == 1.0
        ws.close()
        await ws.wait_closed()
    finally:
        await stop_server(server)
