"""Shared fixtures: a real dkserver on ephemeral loopback ports."""

from __future__ import annotations

import pytest_twisted

from tests.support.server import make_config, start_server, stop_server


@pytest_twisted.async_yield_fixture
async def server(tmp_path):
    running = await start_server(make_config(tmp_path))
    yield running
    await stop_server(running)
