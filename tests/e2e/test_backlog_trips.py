"""End to end: clients connecting at once read their backlogs in shared
database trips (dkserver.store.backlog), each gets its own messages, and
/metrics counts the reads and the trips (docs/analytics.md)."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList

from tests.support.client import Identity, register_and_login
from tests.support.db import db_rows
from tests.support.metrics import sample, scrape
from tests.support.waiting import wait_for
from tests.support.ws import connect, direct_frame

pytestmark = pytest.mark.both_backends

CLIENTS = 10


async def pending_for_each(server) -> tuple[list[str], dict[str, str]]:
    """CLIENTS users, offline, each with one direct message from alice
    stored for them; their tokens and the content each should get."""
    alice = Identity("alice")
    sender = await connect(server, await register_and_login(server, alice))
    tokens, contents = [], {}
    for i in range(CLIENTS):
        ident = Identity(f"reader{i:02d}")
        tokens.append(await register_and_login(server, ident))
        frame = direct_frame(alice, ident.user_id, f"to {i}", ident.public_key_b64)
        sender.send_json(frame)
        contents[ident.user_id] = frame["content"]
    await wait_for(
        lambda: db_rows(server, "SELECT COUNT(*) FROM messages")[0][0] == CLIENTS,
        "the messages stored",
    )
    sender.close()
    await sender.wait_closed()
    return tokens, contents


async def connect_all(server, tokens) -> list:
    results = await DeferredList(
        [Deferred.fromCoroutine(connect(server, t)) for t in tokens],
        fireOnOneErrback=True,
        consumeErrors=True,
    )
    return [client for _, client in results]


async def counted(server) -> tuple[float, float]:
    text = await scrape(server)
    return (
        sample(text, "dkserver_backlog_reads_total"),
        sample(text, "dkserver_backlog_read_trips_total"),
    )


async def each_got_its_own(clients, contents) -> None:
    for client in clients:
        (frame,) = await client.recv_all(1)
        assert frame["to"] == client.user_id
        assert frame["content"] == contents[client.user_id]
        client.close()
        await client.wait_closed()


@pytest_twisted.ensureDeferred
async def test_clients_connecting_at_once_are_counted_and_get_their_backlogs(
    lenient_server,
):
    server = lenient_server
    tokens, contents = await pending_for_each(server)
    reads_before, trips_before = await counted(server)  # alice's connect
    clients = await connect_all(server, tokens)
    await each_got_its_own(clients, contents)
    reads, trips = await counted(server)
    assert reads - reads_before == CLIENTS
    assert 1 <= trips - trips_before <= CLIENTS


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_connects_while_the_database_is_busy_share_a_trip(lenient_server):
    """SQLite's one connection held by another transaction: the connects
    made meanwhile wait behind it, then read in (at most) two trips, one
    after each of the group writer's two commits their flushes wait for."""
    server = lenient_server
    tokens, contents = await pending_for_each(server)
    reads_before, trips_before = await counted(server)
    release = threading.Event()
    held = server.service.store.pool.runInteraction(lambda txn: release.wait(30))
    try:
        clients = await connect_all(server, tokens)
        assert all(c.received == [] for c in clients)  # nothing read yet
    finally:
        release.set()
        await held
    await each_got_its_own(clients, contents)
    reads, trips = await counted(server)
    assert reads - reads_before == CLIENTS
    assert 1 <= trips - trips_before <= 2
