"""The limit parts are chosen in one place: this process's own without
``--redis``, the cluster's with it; and a node whose Redis is gone keeps
serving logins, connects and messages on its own limits."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from dkserver.auth.challenges import ChallengeStore
from dkserver.cluster.challenges import SharedChallenges
from dkserver.cluster.limits import SharedBuckets, SharedConnections
from dkserver.cluster.url import RedisUrl
from dkserver.limits import build_limits
from dkserver.ratelimit import BucketRegistry
from dkserver.ws.caps import ConnectionCounts
from tests.reliability.daemon import free_port
from tests.support.client import Identity, login, register
from tests.support.server import make_config, start_server, stop_server
from tests.support.ws import connect, signed_frame

RATE_LIMITED = "Rate limit exceeded. Please slow down."


def test_without_redis_every_limit_is_the_process_own(tmp_path):
    parts = build_limits(make_config(tmp_path), reactor)
    assert isinstance(parts.challenges, ChallengeStore)
    for buckets in (parts.login_ip, parts.login_user, parts.messages, parts.writes):
        assert isinstance(buckets, BucketRegistry)
    assert isinstance(parts.caps, ConnectionCounts)
    assert parts.node_died is None


def test_with_redis_every_limit_is_shared_over_the_given_connection(tmp_path, pg_url):
    config = make_config(
        tmp_path, db=pg_url, redis=RedisUrl("127.0.0.1", 1), node_id="n1"
    )
    calls = []

    class Recording:
        def evalsha(self, *args):
            calls.append(args)

    parts = build_limits(config, reactor, redis=Recording())
    assert isinstance(parts.challenges, SharedChallenges)
    for buckets in (parts.login_ip, parts.login_user, parts.messages, parts.writes):
        assert isinstance(buckets, SharedBuckets)
    assert isinstance(parts.caps, SharedConnections)
    assert parts.caps.node_id == "n1"
    assert parts.node_died == parts.caps.node_died
    # The node's own limits stand behind the shared ones.
    assert isinstance(parts.messages.fallback, BucketRegistry)
    assert parts.messages.fallback.burst == config.message_burst
    assert parts.caps.fallback is not None


@pytest_twisted.ensureDeferred
async def test_node_without_redis_serves_on_its_own_limits(tmp_path, pg_url):
    config = make_config(
        tmp_path,
        db=pg_url,
        redis=RedisUrl("127.0.0.1", free_port()),  # nothing listens there
        node_id="lonely",
        message_rate=0.001,
        message_burst=2,
    )
    server = await start_server(config)
    try:
        alice = Identity("alice")
        assert await register(server, alice) == 201
        token = await login(server, alice)  # challenge kept by the node
        ws = await connect(server, token)
        for i in range(3):
            ws.send_json(signed_frame(alice, "alice", f"m{i}"))
        frames = [await ws.recv() for _ in range(3)]
        contents = [f["content"] for f in frames]
        # The node's own bucket (burst 2) still limits the sender.
        assert sorted(contents) == sorted(["m0", "m1", RATE_LIMITED])
        ws.close()
        await ws.wait_closed()
    finally:
        await stop_server(server)
