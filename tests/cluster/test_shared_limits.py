"""Shared limits against a real private Redis: two in-process instances of
each part stand for two nodes (each with its own Redis connection), running
the real Lua scripts."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from dkserver.auth.challenges import ChallengeStore
from dkserver.cluster.challenges import CHALLENGE_PREFIX, SharedChallenges
from dkserver.cluster.limits import (
    BUCKET_TAKE,
    CONN_NODE_PREFIX,
    CONN_USER_PREFIX,
    OwnEntries,
    SharedBuckets,
    SharedConnections,
)
from dkserver.cluster.redis import RETRY_INITIAL, RETRY_MAX
from dkserver.cluster.shared import SharedRedis
from dkserver.ratelimit import BucketRegistry
from dkserver.ws.caps import ConnectionCounts
from tests.support.waiting import sleep, wait_for


def redis_command(server, *words: str) -> bytes:
    """One command over a plain socket, bypassing the code under test."""
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        parts = [f"*{len(words)}\r\n".encode()]
        for w in words:
            data = w.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        s.sendall(b"".join(parts))
        return s.recv(4096)


def key_gone(server, key: str) -> bool:
    return redis_command(server, "EXISTS", key) == b":0\r\n"


def redis_empty(server) -> bool:
    return redis_command(server, "DBSIZE") == b":0\r\n"


class Node:
    """What one node holds: its own connection, breaker and fallbacks."""

    def __init__(
        self,
        server,
        name: str,
        rate: float = 0.001,
        burst: int = 3,
        timeout: float = 10.0,
    ):
        self.name = name
        self.conn = txredisapi.lazyConnection(server.host, server.port, dbid=0)
        # Reconnect as a node's own connections do (dkserver.cluster.redis:
        # 0.2 s, at most 2 s apart), not on txredisapi's default backoff (1 s
        # growing to 10 s): on a loaded machine a Redis slow to restart left
        # a node's next attempt beyond until_shared's patience.
        factory = self.conn._factory
        factory.initialDelay = factory.delay = RETRY_INITIAL
        factory.maxDelay = RETRY_MAX
        # Generous unless a test makes Redis fail: a loaded machine must not
        # turn a shared answer into the local fallback.
        self.shared = SharedRedis(self.conn, reactor, timeout=timeout, retry_after=0.2)
        self.local_bucket = BucketRegistry(rate, burst, reactor)
        self.buckets = SharedBuckets(self.shared, "msg", self.local_bucket, reactor)
        self.local_caps = ConnectionCounts()
        self.caps = SharedConnections(self.shared, name, self.local_caps)
        self.local_challenges = ChallengeStore(reactor, ttl=60.0)
        self.challenges = SharedChallenges(self.shared, 60.0, self.local_challenges)

    async def close(self) -> None:
        await self.conn.disconnect()


@pytest_twisted.async_yield_fixture
async def nodes(redis_server):
    made: list[Node] = []

    def make(name: str, **kwargs) -> Node:
        node = Node(redis_server, name, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        await node.close()


async def take(buckets: SharedBuckets, key: str) -> bool:
    result = buckets.try_take(key)
    return result if isinstance(result, bool) else await result


# -- token buckets --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bucket_burst_is_one_for_both_nodes(nodes):
    a, b = nodes("a", burst=3), nodes("b", burst=3)
    assert [await take(a.buckets, "alice") for _ in range(2)] == [True, True]
    assert await take(b.buckets, "alice") is True
    assert await take(b.buckets, "alice") is False
    assert await take(a.buckets, "alice") is False
    # Another key has its own bucket.
    assert await take(b.buckets, "bob") is True


@pytest_twisted.ensureDeferred
async def test_bucket_concurrent_takes_from_two_nodes_grant_exactly_burst(nodes):
    a, b = nodes("a", burst=10), nodes("b", burst=10)
    pending = []
    for _ in range(25):
        pending.append(a.buckets.try_take("carol"))
        pending.append(b.buckets.try_take("carol"))
    results = await DeferredList(
        [p if isinstance(p, Deferred) else Deferred() for p in pending]
    )
    granted = [value for ok, value in results if ok and value is True]
    assert len(granted) == 10
    assert a.shared.failures == b.shared.failures == 0  # all answered by Redis


@pytest_twisted.ensureDeferred
async def test_bucket_refusal_is_then_answered_locally_without_redis(nodes):
    a, b = nodes("a", burst=1), nodes("b", burst=1)
    assert await take(a.buckets, "dave") is True
    assert await take(a.buckets, "dave") is False
    # The refusal said "no token for ~1000 s": a now refuses at once.
    assert a.buckets.try_take("dave") is False
    # b has not asked yet; it asks Redis and is refused too.
    second = b.buckets.try_take("dave")
    assert isinstance(second, Deferred)
    assert await second is False


@pytest_twisted.ensureDeferred
async def test_bucket_refills_from_redis_time(nodes, redis_server):
    a, b = nodes("a", rate=20.0, burst=1), nodes("b", rate=20.0, burst=1)
    assert await take(a.buckets, "erin") is True
    assert await take(b.buckets, "erin") is False
    await wait_for(lambda: take(b.buckets, "erin"), "the shared bucket to refill")


@pytest_twisted.ensureDeferred
async def test_bucket_key_expires_once_it_would_be_full(nodes, redis_server):
    a = nodes("a", rate=10.0, burst=2)
    assert await take(a.buckets, "frank") is True
    ttl = int(redis_command(redis_server, "PTTL", "dk:rate:msg:frank")[1:-2])
    # One token short of full at 10/s: it would be full again in 100 ms.
    assert 0 < ttl <= 101
    await wait_for(
        lambda: key_gone(redis_server, "dk:rate:msg:frank"), "the idle bucket to expire"
    )


@pytest_twisted.ensureDeferred
async def test_script_flushed_from_redis_is_loaded_again(nodes, redis_server):
    a = nodes("a", burst=2)
    assert await take(a.buckets, "gina") is True
    assert redis_command(redis_server, "SCRIPT", "FLUSH") == b"+OK\r\n"
    assert await take(a.buckets, "gina") is True
    assert await take(a.buckets, "gina") is False  # the same bucket, in Redis
    exists = redis_command(redis_server, "SCRIPT", "EXISTS", BUCKET_TAKE.sha)
    assert exists == b"*1\r\n:1\r\n"
    assert a.shared.failures == 0


async def until_shared(node: Node, probe) -> None:
    """Wait until ``node`` reaches Redis again (after a restart)."""
    for _ in range(300):
        before = node.shared.failures
        await probe()
        if node.shared.failures == before and node.shared.available:
            return
        await sleep(0.05)
    raise AssertionError("never reached Redis again")


@pytest_twisted.ensureDeferred
async def test_redis_restart_scripts_reloaded_and_limits_shared_again(
    nodes, redis_server
):
    if not redis_server.private:
        pytest.skip("an external Redis cannot be restarted by the tests")
    a, b = nodes("a", burst=2), nodes("b", burst=2)
    assert await take(a.buckets, "hank") is True
    redis_server.stop()
    redis_server.start()  # empty, no scripts loaded
    await until_shared(a, lambda: take(a.buckets, "probe-a"))
    await until_shared(b, lambda: take(b.buckets, "probe-b"))
    # Buckets are gone with the data; the new ones are shared again.
    assert await take(a.buckets, "hank") is True
    assert await take(b.buckets, "hank") is True
    assert await take(a.buckets, "hank") is False
    exists = redis_command(redis_server, "SCRIPT", "EXISTS", BUCKET_TAKE.sha)
    assert exists == b"*1\r\n:1\r\n"


@pytest_twisted.ensureDeferred
async def test_redis_paused_buckets_fall_back_to_the_node_own(nodes, redis_server):
    if not redis_server.private:
        pytest.skip("an external Redis cannot be paused by the tests")
    a = nodes("a", burst=2)
    assert await take(a.buckets, "ivy") is True  # connected, scripts loaded
    a.shared.timeout = 0.3
    redis_server.pause()
    try:
        # The first call times out; the local bucket (full: 2) answers.
        assert await take(a.buckets, "ivy") is True
        assert a.shared.failures == 1
        # The breaker is open: answered locally, nothing sent.
        assert await take(a.buckets, "ivy") is True
        assert await take(a.buckets, "ivy") is False
        assert a.shared.failures == 1
    finally:
        redis_server.resume()


# -- connection caps -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_reserves_racing_for_the_last_slot_exactly_one_wins(nodes):
    a, b = nodes("a"), nodes("b")
    for round_ in range(20):
        user = f"racer{round_}"
        first = await a.caps.reserve("10.0.0.1", user, 1000, 2)
        assert first is not None
        results = await DeferredList(
            [
                a.caps.reserve("10.0.0.2", user, 1000, 2),
                b.caps.reserve("10.0.0.3", user, 1000, 2),
            ]
        )
        winners = [value for ok, value in results if ok and value is not None]
        assert len(winners) == 1, results


@pytest_twisted.ensureDeferred
async def test_cap_per_ip_holds_across_nodes_and_release_frees_a_slot(
    nodes, redis_server
):
    a, b = nodes("a"), nodes("b")
    ra = await a.caps.reserve("192.0.2.7", "u1", 2, 10)
    rb = await b.caps.reserve("192.0.2.7", "u2", 2, 10)
    assert ra is not None and rb is not None
    assert await a.caps.reserve("192.0.2.7", "u3", 2, 10) is None
    b.caps.release(rb)
    b.caps.release(rb)  # idempotent: releasing twice frees one slot only
    await sleep(0.05)
    again = await a.caps.reserve("192.0.2.7", "u3", 2, 10)
    assert again is not None
    assert await b.caps.reserve("192.0.2.7", "u4", 2, 10) is None
    a.caps.release(ra)
    a.caps.release(again)
    await wait_for(
        lambda: redis_empty(redis_server), "released entries to leave no key"
    )


@pytest_twisted.ensureDeferred
async def test_dead_node_entries_are_reclaimed_by_release_node(nodes, redis_server):
    a, b = nodes("a"), nodes("b")
    for i in range(3):
        assert await a.caps.reserve(f"10.1.0.{i}", "jo", 100, 3) is not None
    assert await b.caps.reserve("10.2.0.1", "jo", 100, 3) is None
    # Node a dies; the registry (or any survivor) calls release_node("a").
    assert await b.caps.release_node("a") == 3
    assert await b.caps.reserve("10.2.0.1", "jo", 100, 3) is not None
    assert redis_command(redis_server, "EXISTS", CONN_NODE_PREFIX + "a") == b":0\r\n"
    assert redis_command(redis_server, "HLEN", CONN_USER_PREFIX + "jo") == b":1\r\n"


def user_fields(server, user: str) -> set[bytes]:
    """The "<node>|<conn>" entries counting against ``user``'s cap."""
    reply = redis_command(server, "HKEYS", CONN_USER_PREFIX + user)
    return {line for line in reply.split(b"\r\n") if b"|" in line}


@pytest_twisted.ensureDeferred
async def test_node_clears_its_own_entries_when_it_starts(nodes, redis_server):
    old = nodes("a")
    for i in range(2):
        assert await old.caps.reserve("10.3.0.1", f"k{i}", 100, 5) is not None
    # "a" restarts (say after a crash): a fresh instance with the same id.
    new = nodes("a")
    service = OwnEntries(new.caps, reactor)
    service.startService()
    await wait_for(
        lambda: key_gone(redis_server, CONN_NODE_PREFIX + "a"),
        "a restarted node to clear its entries",
    )
    assert redis_empty(redis_server)
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_redis_paused_caps_count_locally_then_resync_makes_them_shared(
    nodes, redis_server
):
    if not redis_server.private:
        pytest.skip("an external Redis cannot be paused by the tests")
    a, b = nodes("a"), nodes("b")
    shared_one = await a.caps.reserve("10.4.0.1", "kim", 100, 2)
    assert shared_one is not None
    a.shared.timeout = 0.3
    redis_server.pause()
    try:
        local = [await a.caps.reserve("10.4.0.1", "kim", 100, 2) for _ in range(3)]
        # Counted by this node alone: its own cap of 2 (the shared one is not
        # in the local count).
        assert [r is not None for r in local] == [True, True, False]
        a.caps.release(shared_one)  # cannot reach Redis: stale there
    finally:
        redis_server.resume()
    a.shared.timeout = 10.0
    await sleep(0.3)  # past the breaker's retry_after
    # The first call that gets through resyncs: the stale entry goes, the two
    # connections counted alone are written (the first reserve, which timed
    # out and ran when Redis woke up, is one of them).
    assert await a.caps.reserve("10.4.0.9", "probe", 100, 2) is not None
    want = {f"a|{r[3]}".encode() for r in local if r is not None}
    await wait_for(lambda: user_fields(redis_server, "kim") == want, "the resync")
    # They count cluster-wide now.
    assert await b.caps.reserve("10.4.0.2", "kim", 100, 2) is None
    for r in local:
        if r is not None:
            a.caps.release(r)
    await wait_for(
        lambda: key_gone(redis_server, CONN_USER_PREFIX + "kim"), "the releases"
    )
    assert a.local_caps.reserve("10.4.0.1", "kim", 100, 2) is not None


@pytest_twisted.ensureDeferred
async def test_redis_restart_node_writes_its_connections_again(nodes, redis_server):
    if not redis_server.private:
        pytest.skip("an external Redis cannot be restarted by the tests")
    a = nodes("a")
    kept = [await a.caps.reserve("10.5.0.1", "lee", 100, 5) for _ in range(2)]
    assert all(kept)
    a.shared.timeout = 0.3
    redis_server.stop()
    assert await take(a.buckets, "probe") is True  # fails over: breaker open
    a.shared.timeout = 10.0
    redis_server.start()  # empty
    await until_shared(a, lambda: take(a.buckets, "probe"))
    want = {f"a|{r[3]}".encode() for r in kept}
    await wait_for(lambda: user_fields(redis_server, "lee") == want, "the resync")


# -- challenges ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_challenge_issued_on_one_node_verifies_once_on_another(nodes):
    a, b = nodes("a"), nodes("b")
    challenge = await a.challenges.issue("alice")
    assert await b.challenges.consume("alice") == challenge
    assert await b.challenges.consume("alice") is None
    assert await a.challenges.consume("alice") is None


@pytest_twisted.ensureDeferred
async def test_challenge_consumed_concurrently_on_two_nodes_is_used_once(nodes):
    a, b = nodes("a"), nodes("b")
    challenge = await a.challenges.issue("bob")
    results = await DeferredList(
        [a.challenges.consume("bob"), b.challenges.consume("bob")]
    )
    assert sorted(str(v) for _, v in results) == sorted([challenge, "None"])


@pytest_twisted.ensureDeferred
async def test_challenge_reissue_replaces_and_ttl_expires_it(nodes, redis_server):
    shared = nodes("a").shared
    short = SharedChallenges(shared, 0.2, ChallengeStore(reactor, ttl=0.2))
    first = await short.issue("carl")
    second = await short.issue("carl")
    assert first != second
    ttl = int(redis_command(redis_server, "PTTL", CHALLENGE_PREFIX + "carl")[1:-2])
    assert 0 < ttl <= 200
    await wait_for(
        lambda: key_gone(redis_server, CHALLENGE_PREFIX + "carl"),
        "the challenge to expire",
    )
    assert await short.consume("carl") is None


@pytest_twisted.ensureDeferred
async def test_redis_paused_challenges_are_kept_by_the_node(nodes, redis_server):
    if not redis_server.private:
        pytest.skip("an external Redis cannot be paused by the tests")
    a = nodes("a")
    await a.challenges.issue("warm-up")
    a.shared.timeout = 0.3
    redis_server.pause()
    try:
        challenge = await a.challenges.issue("dora")
        assert len(a.local_challenges) == 1
        assert await a.challenges.consume("dora") == challenge
        assert await a.challenges.consume("dora") is None
    finally:
        redis_server.resume()
