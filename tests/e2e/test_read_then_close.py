"""End to end: a client that reads a message and closes at once has it
delivered (PROTOCOL.md, "Client → server": delivered means read; read, then
close).

Command-line clients (``dk listen --count 1``, scripts) close right after
their ``recv()``, here even in the callback that handed them the frame.  The
server's proof ping travels inside the message (docs/messaging.md), so its
pong precedes the close: the message is marked delivered and the next
connect gets nothing.  Each test runs 50 rounds,
alternating a stored message sent on connect (backlog) and a live one, with
the project's Autobahn/TLS client and with the ``websockets`` library as
``dk`` uses it.
"""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
import pytest_twisted
from twisted.internet import threads
from websockets.asyncio.client import connect as ws_connect

from tests.support.client import Identity, register_and_login
from tests.support.db import db_rows
from tests.support.waiting import wait_for
from tests.support.ws import broadcast_frame, connect, direct_frame

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

ROUNDS = 50


class Round:
    """Alice sends to bob; bob's client connects, reads one frame, closes."""

    def __init__(self, server, kind: str) -> None:
        self.server = server
        self.kind = kind
        self.alice = Identity("alice")
        self.bob = Identity("bob")

    async def start(self) -> None:
        alice_token = await register_and_login(self.server, self.alice)
        self.bob_token = await register_and_login(self.server, self.bob)
        self.sender = await connect(self.server, alice_token)

    def send(self, i: int) -> str:
        text = f"{self.kind} {i}"
        if self.kind == "direct":
            frame = direct_frame(self.alice, "bob", text, self.bob.public_key_b64)
        else:
            frame = broadcast_frame(self.alice, text)
        self.sender.send_json(frame)
        return frame["content"]

    def stored(self) -> int:
        return db_rows(self.server, "SELECT COUNT(*) FROM messages")[0][0]

    def bob_online(self) -> bool:
        return self.server.service.hub.bus.is_online("bob")

    async def send_and_wait_stored(self, i: int) -> str:
        before = self.stored()
        content = self.send(i)
        await wait_for(lambda: self.stored() > before, f"message {i} stored")
        return content

    def check_database(self) -> None:
        if self.kind == "direct":
            statuses = db_rows(
                self.server,
                "SELECT status, COUNT(*) FROM messages WHERE to_user = 'bob'"
                " GROUP BY status",
            )
            assert statuses == [("delivered", ROUNDS)], statuses
        else:
            count = db_rows(
                self.server,
                "SELECT COUNT(*) FROM broadcast_deliveries WHERE user_id = 'bob'",
            )[0][0]
            assert count == ROUNDS, count


async def run_autobahn_rounds(server, kind: str) -> None:
    r = Round(server, kind)
    await r.start()
    for i in range(ROUNDS):
        if i % 2 == 0:  # stored while bob is offline: sent on connect
            content = await r.send_and_wait_stored(i)
            bob = await connect(server, r.bob_token)
        else:  # live
            bob = await connect(server, r.bob_token)
            await wait_for(r.bob_online, "bob online")
            content = r.send(i)
        frame = await bob.recv()
        bob.close()  # at once, in the same callback that read the frame
        assert frame["content"] == content, (i, frame)
        await bob.wait_closed()
        await wait_for(lambda: not r.bob_online(), "bob offline")
    # The next connect gets nothing again, and the database agrees.
    bob = await connect(server, r.bob_token)
    await bob.expect_silence(0.5)
    bob.close()
    await wait_for(lambda: not r.bob_online(), "bob offline")
    r.check_database()


async def websockets_read_one(url: str, cafile: str, timeout: float) -> list[str]:
    """What ``dk listen --count 1`` does: connect, recv() once, close."""
    context = ssl.create_default_context(cafile=cafile)
    async with ws_connect(url, ssl=context, open_timeout=10) as ws:
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout)
        except TimeoutError:
            return []
    return [raw]


async def run_websockets_rounds(server, kind: str) -> None:
    r = Round(server, kind)
    await r.start()
    url = f"wss://localhost:{server.https_port}/ws?token={r.bob_token}"
    cafile = server.config.cert_path

    def read_one(timeout: float = 5.0):
        return threads.deferToThread(
            asyncio.run, websockets_read_one(url, cafile, timeout)
        )

    for i in range(ROUNDS):
        if i % 2 == 0:
            content = await r.send_and_wait_stored(i)
            received = await read_one()
        else:
            reading = read_one()
            await wait_for(r.bob_online, "bob online")
            content = r.send(i)
            received = await reading
        assert [json.loads(raw)["content"] for raw in received] == [content], i
        await wait_for(lambda: not r.bob_online(), "bob offline")
    assert await read_one(timeout=0.5) == []
    r.check_database()


@pytest.mark.parametrize("kind", ["direct", "broadcast"])
@pytest_twisted.ensureDeferred
async def test_read_then_close_is_delivered_autobahn_client(lenient_server, kind):
    await run_autobahn_rounds(lenient_server, kind)


@pytest.mark.parametrize("kind", ["direct", "broadcast"])
@pytest_twisted.ensureDeferred
async def test_read_then_close_is_delivered_websockets_client(lenient_server, kind):
    await run_websockets_rounds(lenient_server, kind)
