"""RedisService against a real private Redis that stops answering.

A paused (SIGSTOPped) Redis still accepts TCP connections, so a reconnect
lands on it and its SELECT (database 1 here) times out; txredisapi then
gives up reconnecting for good.  The node must come back anyway once Redis
answers again (the cluster tests once found a node cut off for the rest of
the run after a Redis pause).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from dkserver.cluster import redis as redis_module
from dkserver.cluster.redis import RedisService
from dkserver.cluster.url import parse_redis_url
from tests.support.waiting import wait_for


@pytest.fixture
def setup_failures():
    """txredisapi's reports of a failed SELECT while the test runs."""
    seen: list[str] = []

    def observe(event: dict) -> None:
        text = formatEvent(event)
        if "could not set dbid" in text:
            seen.append(text)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_commands_come_back_after_a_select_timed_out_on_a_paused_redis(
    redis_server, monkeypatch, setup_failures
):
    if not redis_server.private:
        pytest.skip("pausing needs the test run's own Redis, not DK_TEST_REDIS_URL")
    monkeypatch.setattr(redis_module, "REPLY_TIMEOUT", 0.5)
    url = parse_redis_url(f"redis://{redis_server.host}:{redis_server.port}/1")
    service = RedisService(url, reactor)
    service.startService()
    try:
        await wait_for(lambda: service.connected, "the first connection", 10)
        redis_server.pause()
        try:
            # Unanswered: the command times out and aborts the connection;
            # the reconnect's SELECT times out on the paused server.
            await service.execute("PING").addErrback(lambda f: None)
            await wait_for(lambda: setup_failures, "a failed SELECT", 10)
        finally:
            redis_server.resume()
        await wait_for(lambda: service.connected, "the command connection back", 10)
        assert await service.execute("SET", "k", "v") in ("OK", b"OK")
        assert await service.execute("GET", "k") in ("v", b"v")
    finally:
        await service.stopService()
