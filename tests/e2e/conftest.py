"""Fixtures shared by the end-to-end modules."""

from __future__ import annotations

import pytest_twisted

from tests.support.server import start_server, stop_server


@pytest_twisted.async_yield_fixture
async def lenient_server(backend_config):
    """The real server, on the test's backend, with the message rate limit
    out of the way (a sender sends tens of messages in a few seconds)."""
    running = await start_server(
        backend_config(message_rate=10_000.0, message_burst=10_000)
    )
    yield running
    await stop_server(running)
