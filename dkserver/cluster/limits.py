"""Rate limits and connection caps that hold across every node of a cluster.

Each check is one Lua script on Redis (one round trip, atomic), so two nodes
racing for the last token or the last connection slot cannot both win.  The
Lua sources sit beside this module (``*.lua``).

Redis unreachable (see :mod:`dkserver.cluster.shared`): every check falls
back to this node's own :class:`~dkserver.ratelimit.BucketRegistry` or
:class:`~dkserver.ws.caps.ConnectionCounts`, so the limits still hold per
node (a cluster of N nodes then allows up to N times as much) and a Redis
outage never stops logins, connects or messages.
"""

from __future__ import annotations

import uuid
from importlib.resources import files
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dkserver.cluster.shared import LuaScript, SharedRedis, SharedStateUnavailable
from dkserver.cluster.url import RedisUrl
from dkserver.config import Config
from dkserver.limits import LimitParts
from dkserver.periodic import periodic_service
from dkserver.ratelimit import BucketRegistry
from dkserver.ws.caps import ConnectionCounts


def _script(name: str) -> LuaScript:
    return LuaScript(name, (files(__package__) / f"{name}.lua").read_text())


BUCKET_TAKE = _script("bucket_take")
CONN_RESERVE = _script("conn_reserve")
CONN_RELEASE = _script("conn_release")
CONN_RESYNC = _script("conn_resync")

#: Key prefixes (every dkserver key starts with ``dk:``).
RATE_PREFIX = "dk:rate:"
CONN_IP_PREFIX = "dk:conn:ip:"
CONN_USER_PREFIX = "dk:conn:user:"
CONN_NODE_PREFIX = "dk:conn:node:"


class SharedBuckets:
    """Token buckets in Redis: ``rate`` per second, capacity ``burst``, one
    bucket per key for the whole cluster (``try_take`` as BucketRegistry's,
    answering through a Deferred).

    A refusal carries how long until the next token; until then this node
    refuses the key without asking Redis (tokens only ever grow with time,
    and other nodes can only take them, so that answer is still exact).  The
    wait is measured from when the question was sent, which is before Redis
    read its clock, so the local refusal never outlasts the real one.
    """

    def __init__(
        self,
        shared: SharedRedis,
        name: str,
        fallback: BucketRegistry,
        clock: IReactorTime,
    ) -> None:
        self._shared = shared
        self._prefix = f"{RATE_PREFIX}{name}:"
        self.fallback = fallback
        self.rate = fallback.rate
        self.burst = fallback.burst
        self._clock = clock
        #: key -> clock time before which the shared bucket is surely empty.
        self._empty_until: dict[str, float] = {}

    def try_take(self, key: str) -> bool | Deferred:
        until = self._empty_until.get(key)
        if until is not None:
            if self._clock.seconds() < until:
                return False
            del self._empty_until[key]
        return Deferred.fromCoroutine(self._take(key))

    def retry_after(self, key: str) -> float:
        """Seconds until the shared bucket of ``key`` has a token, as far as
        this node knows: from the last refusal's answer, else one token's
        time (Redis unavailable: the fallback's own)."""
        until = self._empty_until.get(key)
        if until is not None:
            return max(0.0, until - self._clock.seconds())
        if key in self.fallback:
            return self.fallback.retry_after(key)
        return 1.0 / self.rate

    async def _take(self, key: str) -> bool:
        sent = self._clock.seconds()
        try:
            taken, wait_ms = await self._shared.run(
                BUCKET_TAKE, [self._prefix + key], [self.rate, self.burst, 1]
            )
        except SharedStateUnavailable:
            return self.fallback.try_take(key)
        if taken:
            return True
        if wait_ms > 0:
            self._empty_until[key] = sent + wait_ms / 1000
        return False

    def prune(self) -> int:
        """Forget local refusals that have run out (periodic)."""
        now = self._clock.seconds()
        gone = [k for k, until in self._empty_until.items() if until <= now]
        for key in gone:
            del self._empty_until[key]
        return len(gone)


class SharedConnections:
    """Connection caps per IP and per user over the whole cluster.

    Redis holds one entry per connection, named by node and connection, plus
    an index per node: releasing is idempotent, and :meth:`release_node`
    removes a dead node's entries (the node registry calls it).

    The node also remembers its own live connections, and :meth:`resync`
    makes Redis hold exactly those: when it starts (a crashed run's entries
    go), when Redis answers again after an outage or a restart (which lost
    the entries), and every minute.  So a release that could not reach
    Redis, or a reserve that timed out but ran later, is corrected then.
    While Redis is unavailable connections are counted by this node alone
    (``fallback``); the next resync writes them into Redis too.
    """

    log = Logger()

    def __init__(
        self,
        shared: SharedRedis,
        node_id: str,
        fallback: ConnectionCounts | None = None,
    ) -> None:
        self._shared = shared
        self.node_id = node_id
        self.fallback = fallback if fallback is not None else ConnectionCounts()
        #: This node's connections: id -> (ip, user id).
        self._live: dict[str, tuple[str, str]] = {}
        #: Reserves sent and not answered (a resync leaves them be).
        self._pending: set[str] = set()
        shared.on_recovered(self.resync_logged)

    def reserve(self, ip: str, user_id: str, max_ip: int, max_user: int) -> Deferred:
        """A Deferred of the reservation, or of None if a cap is full."""
        return Deferred.fromCoroutine(self._reserve(ip, user_id, max_ip, max_user))

    async def _reserve(
        self, ip: str, user_id: str, max_ip: int, max_user: int
    ) -> tuple | None:
        conn = uuid.uuid4().hex
        keys, args = self._keys_args(ip, user_id, conn)
        self._pending.add(conn)
        try:
            ok = await self._shared.run(
                CONN_RESERVE, keys, [*args, max_ip, max_user, ip, user_id]
            )
        except SharedStateUnavailable:
            local = self.fallback.reserve(ip, user_id, max_ip, max_user)
            if local is None:
                return None
            self._live[conn] = (ip, user_id)
            return ("local", ip, user_id, conn)
        finally:
            self._pending.discard(conn)
        if not ok:
            return None
        self._live[conn] = (ip, user_id)
        return ("shared", ip, user_id, conn)

    def release(self, reservation: tuple) -> None:
        kind, ip, user_id, conn = reservation
        self._live.pop(conn, None)
        if kind == "local":
            self.fallback.release((ip, user_id))
        # Also for a local one: a resync may have written it into Redis.
        keys, args = self._keys_args(ip, user_id, conn)
        d = Deferred.fromCoroutine(self._shared.run(CONN_RELEASE, keys, args))
        # Unavailable: the next resync removes the entry.
        d.addErrback(lambda f: f.trap(SharedStateUnavailable))
        d.addErrback(
            lambda f: self.log.failure("releasing a connection slot failed", f)
        )

    def resync(self) -> Deferred:
        """Make Redis hold exactly this node's live connections; a Deferred
        of (entries removed, entries written)."""
        live = [x for conn, (ip, user) in self._live.items() for x in (conn, ip, user)]
        args = [*self._node_args(self.node_id), len(self._pending), *self._pending]
        d = Deferred.fromCoroutine(
            self._shared.run(
                CONN_RESYNC, [CONN_NODE_PREFIX + self.node_id], [*args, *live]
            )
        )
        d.addCallback(tuple)
        return d

    def resync_logged(self) -> None:
        """:meth:`resync`, its outcome logged (for timers and hooks: never
        raises, and a resync that cannot run now runs on recovery)."""

        def failed(failure) -> None:
            if not failure.check(SharedStateUnavailable):
                self.log.failure("resyncing connection entries failed", failure)

        def done(counts: tuple) -> None:
            removed, written = counts
            if removed:
                self.log.info(
                    "resync removed {removed} stale connection entries of node "
                    "{node} ({written} live)",
                    removed=removed,
                    written=written,
                    node=self.node_id,
                )

        self.resync().addCallbacks(done, failed)

    def release_node(self, node_id: str) -> Deferred:
        """Remove every entry of ``node_id`` (a dead node); a Deferred of
        how many there were."""
        d = Deferred.fromCoroutine(
            self._shared.run(
                CONN_RESYNC,
                [CONN_NODE_PREFIX + node_id],
                [*self._node_args(node_id), 0],
            )
        )
        return d.addCallback(lambda reply: reply[0])

    def node_died(self, node_id: str) -> None:
        """The node registry's ``on_node_died`` hook: free a dead node's
        slots (every survivor may call it; the second finds nothing)."""
        d = self.release_node(node_id)
        d.addCallbacks(
            lambda count: self.log.info(
                "freed {count} connection slots of dead node {node}",
                count=count,
                node=node_id,
            ),
            lambda f: self.log.warn(
                "could not free dead node {node}'s connection slots ({error}); "
                "it clears them itself when it starts again",
                node=node_id,
                error=f.getErrorMessage(),
            ),
        )

    @staticmethod
    def _node_args(node_id: str) -> list[str]:
        return [node_id, CONN_IP_PREFIX, CONN_USER_PREFIX]

    def _keys_args(
        self, ip: str, user_id: str, conn: str
    ) -> tuple[list[str], list[Any]]:
        keys = [
            CONN_IP_PREFIX + ip,
            CONN_USER_PREFIX + user_id,
            CONN_NODE_PREFIX + self.node_id,
        ]
        return keys, [self.node_id, conn]


class OwnEntries(TimerService):
    """This node's entries in Redis: resynced when it starts (a crashed
    run's entries go) and every ``interval`` seconds, removed when it stops
    (after its WebSockets closed)."""

    log = Logger()

    def __init__(
        self,
        caps: SharedConnections,
        clock,
        interval: float = 60.0,
        connection: Any = None,
    ):
        super().__init__(interval, caps.resync_logged)
        self.clock = clock
        self.caps = caps
        #: A Redis connection of the limits' own, closed last.
        self.connection = connection
        self.setName("cluster-own-entries")

    def stopService(self) -> Deferred:
        super().stopService()
        d = self.caps.release_node(self.caps.node_id)
        d.addErrback(
            lambda f: self.log.warn(
                "could not remove node {node}'s connection entries: {error}",
                node=self.caps.node_id,
                error=f.getErrorMessage(),
            )
        )
        if self.connection is not None:
            d.addCallback(lambda _: self.connection.disconnect())
            d.addErrback(lambda f: self.log.failure("closing Redis failed", f))
        return d


def connect(url: RedisUrl) -> Any:
    """A reconnecting txredisapi connection, for limits built without the
    cluster's connection service (tests, tools)."""
    import txredisapi

    return txredisapi.lazyConnection(
        url.host, url.port, dbid=url.db, password=url.password, convertNumbers=False
    )


def shared_limits(
    local: LimitParts,
    config: Config,
    clock,
    cluster: Any = None,
    redis: Any = None,
) -> LimitParts:
    """The cluster's limits, with ``local`` (this node's) as the fallback
    while Redis is unavailable (see :func:`dkserver.limits.build_limits`)."""
    from dkserver.cluster.challenges import SharedChallenges

    if cluster is not None:
        redis = cluster.redis.commands
    own = connect(config.redis) if redis is None else None
    shared = SharedRedis(redis if redis is not None else own, clock)
    caps = SharedConnections(shared, config.node_id, local.caps)
    messages = SharedBuckets(shared, "msg", local.messages, clock)
    parts = LimitParts(
        challenges=SharedChallenges(shared, config.challenge_ttl, local.challenges),
        login_ip=SharedBuckets(shared, "login-ip", local.login_ip, clock),
        login_user=SharedBuckets(shared, "login-user", local.login_user, clock),
        messages=messages,
        writes=SharedBuckets(shared, "write", local.writes, clock),
        public_reads=SharedBuckets(shared, "public-read", local.public_reads, clock),
        caps=caps,
        services=[*local.services, OwnEntries(caps, clock, connection=own)],
        node_died=caps.node_died,
    )
    for name, buckets in (
        ("login-ip", parts.login_ip),
        ("login-user", parts.login_user),
        ("msg", messages),
        ("write", parts.writes),
        ("public-read", parts.public_reads),
    ):
        parts.services.append(
            periodic_service(f"shared-{name}-prune", 5.0, buckets.prune, clock)
        )
    if cluster is not None:
        cluster.nodes.on_node_died(caps.node_died)
        # A new command connection may mean a restarted, empty Redis.
        cluster.redis.on_commands_ready(caps.resync_logged)
    return parts
