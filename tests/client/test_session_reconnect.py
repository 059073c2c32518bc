"""The library's Session survives a server restart (reconnect with backoff)."""

from __future__ import annotations

import asyncio

import pytest
import pytest_twisted
from twisted.internet import threads

from dkclient import Backoff, Client, Home, Identity, Session, make_ssl_context
from tests.client.dkcli import Dk, free_port, wait_online
from tests.support.server import start_server, stop_server


@pytest.mark.both_backends  # what is sent across the restart is stored
@pytest_twisted.ensureDeferred
async def test_session_reconnects_after_server_restart_and_receives(
    tmp_path, backend_config
):
    config = backend_config(https=f"127.0.0.1:{free_port()}")
    server = await start_server(config)
    url = f"https://127.0.0.1:{server.https_port}"
    ssl_context = make_ssl_context(cacert=config.cert_path)
    bob = Client(
        Home(tmp_path / "bob"),
        url,
        ssl_context,
        identity=Identity.generate("bob", server=url),
    )

    def register():
        bob.home.save_identity(bob.identity)
        bob.register()

    await threads.deferToThread(register)

    async def scenario():
        session = Session(bob, backoff=Backoff(initial=0.1, maximum=1.0))
        async with session:
            message = await session.receive(timeout=60)
            return message, session.connects

    # The asyncio client runs in a thread; the server in this reactor.
    receiving = threads.deferToThread(asyncio.run, scenario())
    try:
        await wait_online(server, "bob")
        await stop_server(server)
        server = await start_server(config)
        alice = Dk(server, tmp_path / "alice")
        await alice.ok("init", "alice")
        await wait_online(server, "bob")
        await alice.ok("send", "bob", "after the restart")
        message, connects = await receiving
    finally:
        await stop_server(server)
    assert connects >= 2
    assert message.content == "after the restart"
    assert message.verified and message.sender == "alice"
