"""End to end: stopping the service while WebSocket clients are connected.

The shutdown order of dkserver/service.py: stop listening, close every
session with 1001 "going away", let requests finish, flush the group writer,
end open sessions, close the database.  Nothing the server acknowledged may be
lost, and a restarted server on the same database delivers what is pending.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol

from tests.support.client import Identity, login, post_json, register_and_login
from tests.support.db import assert_database_intact, db_rows
from tests.support.envelope import decrypt_with
from tests.support.server import start_server, stop_server
from tests.support.waiting import sleep
from tests.support.ws import connect, direct_frame

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

GOING_AWAY = 1001


@pytest_twisted.ensureDeferred
async def test_shutdown_closes_clients_with_1001_and_keeps_every_message(
    backend_config,
):
    config = backend_config()
    server = await start_server(config)
    alice, bob, carol = Identity("alice"), Identity("bob"), Identity("carol")
    try:
        alice_token = await register_and_login(server, alice)
        bob_token = await register_and_login(server, bob)
        await register_and_login(server, carol)  # registered, never connected
        alice_ws = await connect(server, alice_token)
        bob_ws = await connect(server, bob_token)

        # Live traffic between the two connected users: acknowledged by delivery.
        live = []
        for i in range(3):
            frame = direct_frame(alice, "bob", f"live {i}", bob.public_key_b64)
            alice_ws.send_json(frame)
            live.append(frame)
        received = await bob_ws.recv_all(3)
        assert [m["content"] for m in received] == [f["content"] for f in live]

        # Messages to offline carol: acknowledged only by the server storing them.
        for_carol = []
        for i, (ident, ws) in enumerate(
            [(alice, alice_ws), (bob, bob_ws), (alice, alice_ws), (bob, bob_ws)]
        ):
            frame = direct_frame(ident, "carol", f"to carol {i}", carol.public_key_b64)
            ws.send_json(frame)
            for_carol.append(frame)
        await sleep(0.3)  # let the server read and commit them
        # None of it bounced back as an error.
        await alice_ws.expect_silence(0.05)
        await bob_ws.expect_silence(0.05)

        https_port = server.https_port
        await server.service.stopService()

        assert (await alice_ws.wait_closed())[0] == GOING_AWAY
        assert (await bob_ws.wait_closed())[0] == GOING_AWAY
    finally:
        await stop_server(server)

    # Nothing listens any more.
    with pytest.raises(ConnectionRefusedError):
        await TCP4ClientEndpoint(reactor, "127.0.0.1", https_port).connect(
            Factory.forProtocol(Protocol)
        )

    assert_database_intact(config)

    stored = db_rows(
        config,
        "SELECT from_user, to_user, content, status FROM messages ORDER BY id",
    )
    expected_live = [("alice", "bob", f["content"], "delivered") for f in live]
    assert stored[:3] == expected_live
    # Two connections' messages may interleave; each sender's order is kept.
    to_carol = stored[3:]
    assert sorted(to_carol) == sorted(
        (f["from"], "carol", f["content"], "pending") for f in for_carol
    )
    for sender in ("alice", "bob"):
        assert [c for frm, _, c, _ in to_carol if frm == sender] == [
            f["content"] for f in for_carol if f["from"] == sender
        ]

    sessions = db_rows(
        config, "SELECT user_id, start_time, end_time, duration FROM sessions"
    )
    assert sorted(user for user, *_ in sessions) == ["alice", "bob"]
    for user, start, end, duration in sessions:
        assert end is not None, (user, start)
        assert duration is not None and duration >= 0, (user, duration)
    events = db_rows(
        config,
        "SELECT user_id, COUNT(*) FROM message_events GROUP BY user_id ORDER BY 1",
    )
    assert events == [("alice", 5), ("bob", 2)]

    # A new server on the same database delivers carol's mail, once.
    server = await start_server(config)
    try:
        carol_token = await login(server, carol)
        carol_ws = await connect(server, carol_token)
        got = await carol_ws.recv_all(len(for_carol))
        # Oldest first, i.e. in the order the server stored them.
        assert [(m["from"], m["to"], m["content"]) for m in got] == [
            (frm, to, content) for frm, to, content, _ in to_carol
        ]
        assert sorted(decrypt_with(carol.signing_key, m["content"]) for m in got) == [
            f"to carol {i}" for i in range(4)
        ]
        await carol_ws.expect_silence(0.2)
        carol_ws.close()
        await carol_ws.wait_closed()

        # Alice and bob have nothing pending: bob already got his live mail.
        bob_ws = await connect(server, await login(server, bob))
        await bob_ws.expect_silence(0.2)

        carol_ws = await connect(server, carol_token)
        await carol_ws.expect_silence(0.3)
    finally:
        await stop_server(server)

    statuses = db_rows(
        config, "SELECT status, COUNT(*) FROM messages GROUP BY status ORDER BY 1"
    )
    assert statuses == [("delivered", 7)]
    assert db_rows(config, "SELECT COUNT(*) FROM sessions WHERE end_time IS NULL") == [
        (0,)
    ]
    assert_database_intact(config)


@pytest_twisted.ensureDeferred
async def test_shutdown_stores_every_frame_read_before_the_close_handshake(
    backend_config,
):
    """Frames a client sent before answering the 1001 close are all stored.

    The client sends a burst (rate limits lifted, as MESSAGE_RATE_LIMIT and
    MESSAGE_BURST_LIMIT allow; FULL sync and 4 kB frames make each commit
    cost what it does on a busy server) and the server is stopped at once.  The close
    handshake completes cleanly, and frames are read in order, so the server
    read every one of them before it saw the client's close: it must store
    them all, pending for offline carol.
    """
    count = 500
    config = backend_config(
        message_rate=100_000.0,
        message_burst=100_000,
        sqlite_synchronous="FULL",
    )
    server = await start_server(config)
    alice, carol = Identity("alice"), Identity("carol")
    try:
        ws = await connect(server, await register_and_login(server, alice))
        await register_and_login(server, carol)
        sent = [
            direct_frame(
                alice, "carol", f"burst {i} " + "x" * 4000, carol.public_key_b64
            )
            for i in range(count)
        ]
        for frame in sent:
            ws.send_json(frame)
        await server.service.stopService()
        assert await ws.wait_closed() == (GOING_AWAY, "server shutting down")
        assert ws.was_clean
    finally:
        await stop_server(server)

    stored = db_rows(config, "SELECT content FROM messages ORDER BY id")
    assert len(stored) == count, f"{count - len(stored)} of {count} frames lost"
    assert [c for (c,) in stored] == [f["content"] for f in sent]


@pytest_twisted.ensureDeferred
async def test_shutdown_with_many_clients_finishes_within_grace(backend_config):
    config = backend_config(shutdown_grace=2.0)
    server = await start_server(config)
    clients = []
    try:
        for i in range(5):
            token = await register_and_login(server, Identity(f"user{i}"))
            clients.append(await connect(server, token))
            clients.append(await connect(server, token))  # two devices each
        assert server.service.bus.connection_count() == 10
        started = reactor.seconds()
        await server.service.stopService()
        assert reactor.seconds() - started < config.shutdown_grace + 1.0
        codes = [(await ws.wait_closed())[0] for ws in clients]
        assert codes == [GOING_AWAY] * len(clients)
        assert server.service.bus.connection_count() == 0
    finally:
        await stop_server(server)

    assert db_rows(config, "SELECT COUNT(*), COUNT(end_time) FROM sessions") == [
        (10, 10)
    ]
    assert_database_intact(config)


@pytest_twisted.ensureDeferred
async def test_shutdown_ends_a_client_that_ignores_the_close(backend_config):
    """A peer that never answers the close is dropped after the grace period."""
    config = backend_config(shutdown_grace=0.5)
    server = await start_server(config)
    try:
        token = await register_and_login(server, Identity("alice"))
        ws = await connect(server, token)
        ws.pause_reading()  # never reads the close frame, never answers it
        started = reactor.seconds()
        await server.service.stopService()
        assert reactor.seconds() - started < 3.0
        deadline = reactor.seconds() + 1.0
        while server.service.bus.connection_count() and reactor.seconds() < deadline:
            await sleep(0.01)
        assert server.service.bus.connection_count() == 0
        ws.resume_reading()
        await ws.wait_closed()
        assert ws.close_code != 1000
    finally:
        await stop_server(server)
    assert db_rows(config, "SELECT COUNT(*), COUNT(end_time) FROM sessions") == [(1, 1)]


@pytest_twisted.ensureDeferred
async def test_shutdown_waits_for_aborted_connections_to_be_torn_down(backend_config):
    """stopService returns only once every WebSocket session has ended.

    ``abortConnection`` reports ``connectionLost`` later, at the transport's
    pace (the next reactor turn for TCP, later under load or for other
    transports).  Here the transport reports it 0.2 s later, which makes the
    race seen in about half the plain runs of the test above deterministic.
    """
    config = backend_config(shutdown_grace=0.3)
    server = await start_server(config)
    try:
        token = await register_and_login(server, Identity("alice"))
        ws = await connect(server, token)
        ws.pause_reading()  # never answers the close: aborted after the grace
        (conn,) = server.service.bus.all_connections()
        abort = conn.transport.abortConnection

        def slow_abort():
            reactor.callLater(0.2, abort)

        conn.transport.abortConnection = slow_abort
        await server.service.stopService()
        still_open = server.service.bus.connection_count()
        ws.resume_reading()
        await ws.wait_closed()
        assert still_open == 0, "stopService returned with a live session"
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_shutdown_answers_a_waiting_forward_request_promptly(backend_config):
    """A /direct-message/ waiting on a client that shutdown closes is answered."""
    config = backend_config(shutdown_grace=3.0)
    server = await start_server(config)
    try:
        token = await register_and_login(server, Identity("alice"))
        ws = await connect(server, token)
        pending = defer.ensureDeferred(
            post_json(
                server,
                "/direct-message/",
                {"type": "forward", "query": "still there?"},
                {"Authorization": f"Bearer {token}"},
            )
        )
        await ws.recv()  # the forward request reached the client
        started = reactor.seconds()
        await server.service.stopService()
        assert reactor.seconds() - started < config.shutdown_grace
        assert (await ws.wait_closed())[0] == GOING_AWAY
        code, body = await pending
        assert code == 404, body
        assert body["error"] is True
    finally:
        await stop_server(server)
