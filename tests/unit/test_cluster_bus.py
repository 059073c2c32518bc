"""ClusterBus and the presence mirror against fakes: the orderings that a
real cluster test cannot force (a slow SUBSCRIBE, a lost delta)."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from dkserver.cluster.bus import (
    BROADCAST_CHANNEL,
    RESCAN_CHANNEL,
    SUBSCRIBE_WAIT,
    ClusterBus,
    user_channel,
)
from dkserver.cluster.nodes import NodeRegistry


class FakeRedis:
    def __init__(self) -> None:
        self.connected = True
        self.pending: dict[bytes, Deferred] = {}
        self.channels: set[bytes] = set()
        self.sent: list[tuple] = []
        self.handler = None
        self.resubscribed = []
        self.commands_ready = []
        self.evals: list[tuple] = []

    def set_message_handler(self, handler) -> None:
        self.handler = handler

    def on_resubscribed(self, hook) -> None:
        self.resubscribed.append(hook)

    def on_commands_ready(self, hook) -> None:
        self.commands_ready.append(hook)

    def subscribe(self, channel: bytes) -> Deferred:
        self.channels.add(channel)
        d = self.pending[channel] = Deferred()
        return d

    def unsubscribe(self, channel: bytes) -> None:
        self.channels.discard(channel)

    def execute(self, *args) -> Deferred:
        if not self.connected:
            return fail(ConnectionError("down"))
        self.sent.append(args)
        return succeed(1)

    def eval(self, script, keys, args) -> Deferred:
        self.evals.append((keys, args))
        return Deferred()  # never answered unless a test does


class FakeNodes:
    def __init__(self) -> None:
        self.died = []
        self.changes = []

    def on_node_died(self, callback) -> None:
        self.died.append(callback)

    def user_online(self, user_id):
        self.changes.append(("+", user_id))

    def user_offline(self, user_id):
        self.changes.append(("-", user_id))

    def online_elsewhere(self, user_id):
        return user_id == "remote"

    def remote_users(self):
        return ["remote"]

    def presence_message(self, data):
        self.changes.append(("delta", data))


@dataclass(eq=False)
class FakeConn:
    user_id: str
    got: list = field(default_factory=list)
    rescans: int = 0

    def deliver(self, frame, ack) -> None:
        self.got.append((frame.payload, ack))

    def rescan(self) -> None:
        self.rescans += 1


@dataclass
class Frame:
    payload: bytes


def make_bus(node: str = "n0"):
    redis, nodes, clock = FakeRedis(), FakeNodes(), Clock()
    bus = ClusterBus(node, redis, nodes, clock, Frame)
    return bus, redis, nodes, clock


def test_backlog_scan_waits_until_the_users_channel_is_subscribed():
    bus, redis, nodes, _ = make_bus()
    conn = FakeConn("bob")
    assert bus.add(conn)
    assert user_channel("bob") in redis.channels and nodes.changes == [("+", "bob")]
    live = bus.when_live("bob")
    assert isinstance(live, Deferred) and not live.called
    redis.pending[user_channel("bob")].callback(True)
    assert live.called
    assert bus.when_live("bob") is None  # confirmed: later connections go at once
    assert conn.rescans == 0


def test_a_scan_that_stopped_waiting_is_redone_once_subscribed():
    bus, redis, _, clock = make_bus()
    conn = FakeConn("bob")
    bus.add(conn)
    live = bus.when_live("bob")
    clock.advance(SUBSCRIBE_WAIT)  # a frozen Redis: the backlog goes ahead
    assert live.called and conn.rescans == 0
    redis.pending[user_channel("bob")].callback(True)
    assert conn.rescans == 1  # what was published meanwhile is in the store


def test_direct_message_is_delivered_locally_and_published_once():
    bus, redis, _, _ = make_bus()
    bob = FakeConn("bob")
    bus.add(bob)
    assert bus.send_direct("bob", Frame(b"{}"), 7) == 1
    assert bob.got == [(b"{}", ("d", 7, "bob", None))]
    assert redis.sent == [("PUBLISH", user_channel("bob"), b"n0\n7\n{}")]
    # Our own publication comes back through the subscription: skipped.
    redis.handler(user_channel("bob"), b"n0\n7\n{}")
    assert len(bob.got) == 1
    # Another node's is delivered, with this node's acknowledgement.
    redis.handler(user_channel("bob"), b'n1\n8\n{"x":1}')
    assert bob.got[-1] == (b'{"x":1}', ("d", 8, "bob", None))


def test_remote_broadcast_reaches_local_users_except_the_sender():
    bus, redis, _, _ = make_bus()
    alice, bob = FakeConn("alice"), FakeConn("bob")
    bus.add(alice)
    bus.add(bob)
    redis.handler(BROADCAST_CHANNEL, b"n1\n9\nalice\n{}")
    assert alice.got == [] and bob.got == [(b"{}", ("b", 9, "bob", None))]
    redis.handler(BROADCAST_CHANNEL, b"n0\n10\ncarol\n{}")  # our own
    assert len(bob.got) == 1


def test_the_store_time_travels_with_the_frame_for_the_other_nodes_histogram():
    bus, redis, _, _ = make_bus()
    bob = FakeConn("bob")
    bus.add(bob)
    bus.send_direct("bob", Frame(b"{}"), 7, 1_700_000_000_123_456_789)
    bus.send_broadcast("bob", Frame(b"{}"), 8, 1_700_000_000_999_000_001)
    assert redis.sent == [
        ("PUBLISH", user_channel("bob"), b"n0 1700000000123456789\n7\n{}"),
        ("PUBLISH", BROADCAST_CHANNEL, b"n0 1700000000999000001\n8\nbob\n{}"),
    ]
    # Our own, with its store time, is still recognised as ours.
    redis.handler(user_channel("bob"), redis.sent[0][2])
    assert len(bob.got) == 1
    redis.handler(user_channel("bob"), b"n1 1700000000000000005\n9\n{}")
    assert bob.got[-1] == (b"{}", ("d", 9, "bob", 1_700_000_000_000_000_005))
    redis.handler(BROADCAST_CHANNEL, b"n1 1700000000000000006\n10\nalice\n{}")
    assert bob.got[-1] == (b"{}", ("b", 10, "bob", 1_700_000_000_000_000_006))


def parse_as_0_1_0(node: bytes, data: bytes) -> tuple[int, bytes] | None:
    """What a node of 0.1.0 does with a direct frame: deliver ``(id,
    payload)`` unless the origin (up to the first newline) is its own."""
    origin, message_id, payload = data.split(b"\n", 2)
    return None if origin == node else (int(message_id), payload)


def test_a_node_from_before_the_store_time_still_delivers_and_skips_its_own():
    bus, redis, _, _ = make_bus("n1")
    bus.send_direct("bob", Frame(b"{}"), 7, 5)
    bus.send_direct("bob", Frame(b"{}"), 8)  # no store time: the old format
    with_time, without = (sent[2] for sent in redis.sent)
    assert parse_as_0_1_0(b"n0", with_time) == (7, b"{}")
    assert parse_as_0_1_0(b"n0", without) == (8, b"{}")
    # An old n1 would publish the old format, which it recognises as its own.
    assert parse_as_0_1_0(b"n1", without) is None


def test_an_unreadable_or_longer_store_time_field_still_delivers():
    """The field only feeds a histogram: a later build may add to it."""
    bus, redis, _, _ = make_bus()
    bob = FakeConn("bob")
    bus.add(bob)
    for origin in (b"n1 12x", b"n1 ", b"n1 -3", b"n1 42 later"):
        redis.handler(user_channel("bob"), origin + b"\n9\n{}")
    assert [ack for _, ack in bob.got] == [
        ("d", 9, "bob", None),
        ("d", 9, "bob", None),
        ("d", 9, "bob", None),
        ("d", 9, "bob", 42),
    ]
    redis.handler(BROADCAST_CHANNEL, b"n1 x\n10\nalice\n{}")
    assert bob.got[-1] == (b"{}", ("b", 10, "bob", None))
    redis.handler(user_channel("bob"), b"n0 42 later\n11\n{}")  # our own
    assert len(bob.got) == 5


def test_resubscribe_and_node_death_rescan_every_connection():
    bus, redis, nodes, _ = make_bus()
    conns = [FakeConn("a"), FakeConn("b"), FakeConn("b")]
    for conn in conns:
        bus.add(conn)
    redis.resubscribed[0]()
    assert [c.rescans for c in conns] == [1, 1, 1]
    assert bus.when_live("a") is None  # resubscribed means confirmed
    nodes.died[0]("n2")
    assert [c.rescans for c in conns] == [2, 2, 2]


def test_a_failed_publish_asks_every_node_to_rescan_once_redis_is_back():
    bus, redis, _, _ = make_bus()
    redis.connected = False
    bus.send_direct("bob", Frame(b"{}"), 1)
    bus.send_direct("bob", Frame(b"{}"), 2)
    redis.connected = True
    for hook in redis.commands_ready:
        hook()
    assert redis.sent == [("PUBLISH", RESCAN_CHANNEL, b"n0")]
    conn = FakeConn("carol")
    bus.add(conn)
    redis.handler(RESCAN_CHANNEL, b"n1")
    assert conn.rescans == 1


def test_presence_combines_local_and_remote_users():
    bus, _, nodes, _ = make_bus()
    bus.add(FakeConn("alice"))
    assert bus.is_online("alice") and bus.is_online("remote")
    assert not bus.is_online("nobody")
    assert sorted(bus.online_users()) == ["alice", "remote"]
    conn = FakeConn("bob")
    bus.add(conn)
    bus.remove(conn)
    assert nodes.changes[-1] == ("-", "bob") and not bus.is_online("bob")


# -- the presence mirror -------------------------------------------------------


def make_registry():
    redis, clock = FakeRedis(), Clock()
    registry = NodeRegistry(redis, "n0", clock, lambda: [])
    registry._live.add("n1")
    return registry, redis


def test_deltas_in_order_apply_and_a_gap_fetches_the_whole_set():
    registry, redis = make_registry()
    registry.presence_message(b"n1 e1.0 * -")  # an announce: fetch the set
    assert len(redis.evals) == 1
    registry._snapshot_arrived(["e1.0", []], "n1")
    registry._snapshots.clear()
    registry.presence_message(b"n1 e1.1 + bob")
    registry.presence_message(b"n1 e1.2 + carol")
    assert registry.online_elsewhere("bob") and registry.online_elsewhere("carol")
    registry.presence_message(b"n1 e1.2 + carol")  # a repeat changes nothing
    registry.presence_message(b"n1 e1.4 - bob")  # e1.3 was lost
    assert registry.online_elsewhere("bob")  # not applied past the gap...
    assert len(redis.evals) == 2  # ...the set is fetched instead
    registry._snapshot_arrived(["e1.4", ["carol"]], "n1")
    assert not registry.online_elsewhere("bob")
    assert list(registry.remote_users()) == ["carol"]


def test_a_dead_node_takes_its_users_and_tells_the_callbacks():
    registry, _ = make_registry()
    registry._snapshot_arrived(["e1.3", ["bob"]], "n1")
    died = []
    registry.on_node_died(died.append)
    registry._node_gone("n1")
    assert died == ["n1"] and not registry.online_elsewhere("bob")
    registry.presence_message(b"n1 e1.4 + bob")  # from a node not alive: ignored
    assert not registry.online_elsewhere("bob")
