"""Connection limits per user and per IP: 429 before any upgrade."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.support.client import Identity, register_and_login
from tests.support.server import start_server, stop_server
from tests.support.ws import connect, upgrade_status

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends


@pytest_twisted.ensureDeferred
async def test_connections_per_user_are_limited_and_released(backend_config):
    server = await start_server(backend_config(max_connections_per_user=2))
    try:
        token = await register_and_login(server, Identity("many"))
        first = await connect(server, token)
        second = await connect(server, token)
        assert await upgrade_status(server, token) == 429
        # Another user is not affected.
        other = await register_and_login(server, Identity("other"))
        assert await upgrade_status(server, other) == 101
        first.close()
        await first.wait_closed()
        for _ in range(50):
            if await upgrade_status(server, token) == 101:
                break
            await deferLater(reactor, 0.05, lambda: None)
        else:
            raise AssertionError("slot was not released after close")
        second.close()
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_connections_per_ip_are_limited(backend_config):
    server = await start_server(backend_config(max_connections_per_ip=3))
    try:
        tokens = [await register_and_login(server, Identity(f"u{i}")) for i in range(4)]
        clients = [await connect(server, t) for t in tokens[:3]]
        assert await upgrade_status(server, tokens[3]) == 429
        metrics = server.service.metrics.render().decode()
        assert 'dkserver_refused_upgrades_total{reason="limit"} 1.0' in metrics
        for c in clients:
            c.close()
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_compression_offer_is_declined_not_fatal(server):
    """Clients such as `websockets` offer permessage-deflate; dkserver keeps
    compression off and must still accept the connection."""
    token = await register_and_login(server, Identity("deflate"))
    offer = "permessage-deflate; client_max_window_bits"
    assert await upgrade_status(server, token, extensions=offer) == 101


@pytest_twisted.ensureDeferred
async def test_no_new_sessions_once_shutdown_has_begun(server):
    token = await register_and_login(server, Identity("late"))
    server.service.hub.closing = True
    try:
        assert await upgrade_status(server, token) == 503
    finally:
        server.service.hub.closing = False
    assert server.service.bus.connection_count() == 0
