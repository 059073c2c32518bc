"""Live delivery across nodes: a :class:`~dkserver.ws.sessions.LiveBus` on
Redis pub/sub.

Routing: one channel per user, ``dk:u:<user_id>``, subscribed by every node
where that user has a connection (on its first, unsubscribed after its
last); broadcasts go once to ``dk:bcast``, which every node subscribes.  A
direct message costs one ``PUBLISH`` and Redis does the fan-out to the nodes
that hold the recipient; no presence lookup sits on the message path.  (The
alternative, node channels plus a lookup of where the recipient is, needs
the lookup in the same atomic step as the publish to keep the ordering
argument below, i.e. a Lua script per message, and a stale cached lookup
would lose messages.)  Measured on Redis 7.0 with 3 subscribers holding
1000 user channels each (redis-benchmark -P 16, see docs/scaling.md): a
per-user PUBLISH costs Redis 1.7 us of CPU, a Lua lookup-and-publish to a
node channel 4.6 us, so one Redis core relays ~2.7x the messages this way.

Ordering, so that nothing committed is lost or sent twice: the hub publishes
after the commit, and a connection's backlog scan starts only once its
user's channel is confirmed subscribed (:meth:`ClusterBus.when_live`).  So a
message either committed before the scan began (the scan finds it) or was
published after the subscription took effect (it arrives live); when both,
the connection sends it once (the protocol keeps the backlog's ids).

Pub/sub loses what is published while a subscriber is away.  Each node's
messages are stored first, so: when this node's subscriber is back (every
channel subscribed again) every local connection rescans its backlog; when
this node could not publish (its command connection was down), it asks every
node to rescan (``dk:rescan``) once it can publish again.

Each frame is published with the origin node's id; a node skips its own
(its connections were served locally), so each connection gets each message
once.  Acknowledgements stay where the connection is: the connection's
outbox confirms to its own node's hub.  The origin field also carries, after a
space, the message's store time (Unix ns, the origin's clock), so the
delivery-latency histogram of the node that delivers it counts it too; a
node id has no space, so a node that predates the field reads the pair as
an origin that is not its own and delivers as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dkserver.cluster.forward import NodeForwards
from dkserver.cluster.nodes import PRESENCE_CHANNEL, NodeRegistry
from dkserver.cluster.redis import RedisService, channel
from dkserver.ws.sessions import Connection, LocalBus

BROADCAST_CHANNEL = b"dk:bcast"
RESCAN_CHANNEL = b"dk:rescan"
USER_PREFIX = b"dk:u:"
#: A backlog scan waits at most this long for its user's subscription (a
#: frozen Redis); the connection is rescanned once it is confirmed.
SUBSCRIBE_WAIT = 2.0


def _split_origin(field: bytes) -> tuple[bytes, int | None]:
    """The origin node's id and the store time after it (None when absent
    or unreadable: it only feeds a histogram, so a frame with a field this
    build does not read, a later build's say, is still delivered)."""
    origin, _, rest = field.partition(b" ")
    head = rest.split(b" ", 1)[0]
    return origin, int(head) if head.isdigit() else None


def user_channel(user_id: str) -> bytes:
    return channel(USER_PREFIX, user_id)


class _Subscription:
    """One user's channel on this node, while the user has a connection."""

    __slots__ = ("confirmed", "late", "waiters")

    def __init__(self) -> None:
        self.confirmed = False
        #: A backlog scan stopped waiting before the confirmation.
        self.late = False
        self.waiters: list[Deferred] = []


class ClusterBus:
    log = Logger()

    def __init__(
        self,
        node_id: str,
        redis: RedisService,
        nodes: NodeRegistry,
        clock: Any,
        prepare: Callable[[bytes], Any],
        local: LocalBus | None = None,
        forwards: NodeForwards | None = None,
    ) -> None:
        self.node_id = node_id
        self._origin = node_id.encode()
        self.redis = redis
        self.nodes = nodes
        self.clock = clock
        #: ``prepare(payload)`` frames a payload once (Hub.prepare).
        self.prepare = prepare
        self.local = local if local is not None else LocalBus()
        #: Forward requests to and from other nodes (None: not offered).
        self.forwards = forwards
        self._subs: dict[str, _Subscription] = {}
        #: A publish failed: the other nodes must rescan once we can publish.
        self._lost_publishes = False
        self.published = 0
        redis.set_message_handler(self._message)
        redis.on_resubscribed(self._rescan_all)
        redis.on_commands_ready(self._commands_ready)
        # A node that died between a commit and its publish left messages
        # stored but never sent live: the survivors' users rescan.
        nodes.on_node_died(lambda node: self._rescan_all())
        for fixed in (BROADCAST_CHANNEL, RESCAN_CHANNEL, PRESENCE_CHANNEL):
            redis.subscribe(fixed)

    # -- who is connected ------------------------------------------------------

    def add(self, conn: Connection) -> bool:
        first = self.local.add(conn)
        if first:
            user_id = conn.user_id
            sub = self._subs[user_id] = _Subscription()
            d = self.redis.subscribe(user_channel(user_id))
            d.addCallback(self._subscribed, user_id, sub)
            self.nodes.user_online(user_id)
        return first

    def remove(self, conn: Connection) -> bool:
        last = self.local.remove(conn)
        if last:
            user_id = conn.user_id
            sub = self._subs.pop(user_id, None)
            if sub is not None:
                self._release(sub)
            self.redis.unsubscribe(user_channel(user_id))
            self.nodes.user_offline(user_id)
        return last

    def when_live(self, user_id: str) -> Deferred | None:
        """None when messages to ``user_id`` already reach this node live;
        else a Deferred that fires once they do (or SUBSCRIBE_WAIT passed)."""
        sub = self._subs.get(user_id)
        if sub is None or sub.confirmed:
            return None
        d: Deferred = Deferred()
        sub.waiters.append(d)
        self.clock.callLater(SUBSCRIBE_WAIT, self._stop_waiting, sub, d)
        return d

    def _subscribed(self, ok: bool, user_id: str, sub: _Subscription) -> None:
        if self._subs.get(user_id) is not sub:
            return  # the user left (and maybe came back) meanwhile
        if not ok:
            # No subscriber now: the backlog goes ahead, and the rescan after
            # the resubscribe covers what is published meanwhile.
            self._release(sub)
            return
        sub.confirmed = True
        late, sub.late = sub.late, False
        self._release(sub)
        if late:
            self._rescan(user_id)

    def _stop_waiting(self, sub: _Subscription, d: Deferred) -> None:
        if d in sub.waiters:
            sub.waiters.remove(d)
            sub.late = True
            d.callback(None)

    @staticmethod
    def _release(sub: _Subscription) -> None:
        waiters, sub.waiters = sub.waiters, []
        for d in waiters:
            d.callback(None)

    def connections(self, user_id: str) -> tuple[Connection, ...]:
        return self.local.connections(user_id)

    def is_online(self, user_id: str) -> bool:
        return self.local.is_online(user_id) or self.nodes.online_elsewhere(user_id)

    @property
    def presence_version(self) -> int:
        """Changes whenever the cluster-wide online set may have (a sum of two
        counters that only grow)."""
        return self.local.presence_version + self.nodes.presence_version

    def online_users(self) -> list[str]:
        here = self.local.online_users()
        seen = set(here)
        return here + [u for u in self.nodes.remote_users() if u not in seen]

    def connection_count(self) -> int:
        return self.local.connection_count()

    def all_connections(self) -> list[Connection]:
        return self.local.all_connections()

    # -- delivery --------------------------------------------------------------

    def send_direct(
        self, to_user: str, frame: Any, message_id: int, stored_ns: int | None = None
    ) -> int:
        sent = self.local.send_direct(to_user, frame, message_id, stored_ns)
        self._publish(
            user_channel(to_user),
            b"%s\n%d\n%s" % (self._origin_field(stored_ns), message_id, frame.payload),
        )
        return sent

    def send_broadcast(
        self,
        from_user: str,
        frame: Any,
        message_id: int,
        stored_ns: int | None = None,
    ) -> int:
        sent = self.local.send_broadcast(from_user, frame, message_id, stored_ns)
        self._publish(
            BROADCAST_CHANNEL,
            b"%s\n%d\n%s\n%s"
            % (
                self._origin_field(stored_ns),
                message_id,
                from_user.encode(),
                frame.payload,
            ),
        )
        return sent

    def _origin_field(self, stored_ns: int | None) -> bytes:
        if stored_ns is None:
            return self._origin
        return b"%s %d" % (self._origin, stored_ns)

    def _publish(self, channel: bytes, data: bytes) -> None:
        self.published += 1
        self.redis.execute("PUBLISH", channel, data).addErrback(self._publish_failed)

    def _publish_failed(self, failure) -> None:
        # Stored, not live: delivered by the rescan we ask for once we can.
        if not self._lost_publishes:
            self.log.warn(
                "publish failed ({error}); other nodes rescan when Redis is back",
                error=failure.getErrorMessage(),
            )
        self._lost_publishes = True

    def _commands_ready(self) -> None:
        if self._lost_publishes:
            self._lost_publishes = False
            d = self.redis.execute("PUBLISH", RESCAN_CHANNEL, self._origin)
            d.addErrback(self._publish_failed)

    def _message(self, channel: bytes, data: bytes) -> None:
        if channel.startswith(USER_PREFIX):
            origin, message_id, payload = data.split(b"\n", 2)
            origin, stored_ns = _split_origin(origin)
            if origin != self._origin:
                user_id = channel[len(USER_PREFIX) :].decode()
                if self.local.is_online(user_id):
                    self.local.send_direct(
                        user_id,
                        self.prepare(payload),
                        int(message_id),
                        stored_ns,
                    )
        elif channel == BROADCAST_CHANNEL:
            origin, message_id, sender, payload = data.split(b"\n", 3)
            origin, stored_ns = _split_origin(origin)
            if origin != self._origin:
                self.local.send_broadcast(
                    sender.decode(),
                    self.prepare(payload),
                    int(message_id),
                    stored_ns,
                )
        elif self.forwards is not None and channel == self.forwards.channel:
            self.forwards.message(data)
        elif channel == PRESENCE_CHANNEL:
            self.nodes.presence_message(data)
        elif channel == RESCAN_CHANNEL:
            if data != self._origin:
                self.log.info("node {node} asked for a rescan", node=data.decode())
                self._rescan_all()

    def ask_elsewhere(self, user_id: str, content: str) -> Deferred | None:
        if self.forwards is None:
            return None
        return self.forwards.ask(user_id, content)

    # -- recovery --------------------------------------------------------------

    def _rescan_all(self) -> None:
        for sub in self._subs.values():  # resubscribed: every channel is live
            sub.confirmed, sub.late = True, False
            self._release(sub)
        conns = self.local.all_connections()
        if conns:
            self.log.info(
                "rescanning the backlogs of {count} connections", count=len(conns)
            )
        for conn in conns:
            conn.rescan()

    def _rescan(self, user_id: str) -> None:
        for conn in self.local.connections(user_id):
            conn.rescan()
