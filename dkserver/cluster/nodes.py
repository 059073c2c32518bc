"""Which nodes are alive, and which users are online on each.

Liveness: every HEARTBEAT_INTERVAL a node stamps itself into the ZSET
``dk:nodes`` with Redis's own clock (``TIME`` inside the script: one clock
for the cluster).  The same script removes nodes whose stamp is older than
NODE_EXPIRY, with their presence (unless its own stamp is that old too:
then Redis was paused or this node frozen, and the others get a round to
stamp again), so a node that dies (SIGKILL, a network
cut, SIGSTOP) stops counting its users at most NODE_EXPIRY +
HEARTBEAT_INTERVAL after its last heartbeat (the next survivor's heartbeat
removes it; every node sees it gone by its own next heartbeat).  A node that
finds itself newly added (it was frozen and removed, or Redis restarted and
forgot everything) announces its users again.

Presence: each node owns a SET ``dk:presence:<node>`` of its online users,
versioned ``<epoch>.<seq>`` in the hash ``dk:node-version``.  A change is
one script (set, version, and a ``PUBLISH dk:presence`` delta); the other
nodes keep a mirror per node and apply a delta whose seq follows theirs.
A gap (a lost pub/sub message, a reconnect), a new epoch (an announce), or
a heartbeat reporting a version other than the mirror's makes them fetch
that node's whole set (one atomic script: set and version).  So
``is_online`` is answered from memory, synchronously, and every node
converges on the same answer within one heartbeat even when deltas are lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from dkserver.cluster.redis import RedisService, log_errors

HEARTBEAT_INTERVAL = 1.0
#: A node whose last heartbeat is older than this is dead (see module doc).
NODE_EXPIRY = 4.0

NODES_KEY = "dk:nodes"
VERSIONS_KEY = "dk:node-version"
PRESENCE_PREFIX = "dk:presence:"
PRESENCE_CHANNEL = b"dk:presence"

_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
-- Our own stamp is stale too: Redis (or we) stood still, not the others;
-- they get one round to stamp again before anyone is expired.
if not mine or now - tonumber(mine) <= tonumber(ARGV[2]) then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf',
    '(' .. (now - tonumber(ARGV[2])))
  for _, node in ipairs(dead) do
    redis.call('ZREM', KEYS[1], node)
    redis.call('DEL', ARGV[3] .. node)
    redis.call('HDEL', KEYS[2], node)
  end
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local versions = redis.call('HMGET', KEYS[2], unpack(live))
for i = 1, #live do
  if not versions[i] then versions[i] = '' end
end
return {added, live, versions}
"""

_CHANGE = """
if ARGV[3] == '+' then
  redis.call('SADD', KEYS[1], ARGV[4])
else
  redis.call('SREM', KEYS[1], ARGV[4])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[5],
  ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
return 1
"""

_ANNOUNCE = """
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', 'dk:presence', ARGV[1] .. ' ' .. ARGV[2] .. ' * -')
return 1
"""

_SNAPSHOT = """
return {redis.call('HGET', KEYS[2], ARGV[1]) or '', redis.call('SMEMBERS', KEYS[1])}
"""


def _version(text: Any) -> tuple[str, int]:
    text = text.decode() if isinstance(text, bytes) else str(text or "")
    epoch, _, seq = text.partition(".")
    return epoch, int(seq) if seq.isdigit() else -1


@dataclass
class _Mirror:
    epoch: str = ""
    seq: int = -1
    users: set[str] = field(default_factory=set)


class NodeRegistry(Service):
    """This node's heartbeat and presence, and a mirror of every other's."""

    log = Logger()

    def __init__(
        self,
        redis: RedisService,
        node_id: str,
        clock: Any,
        local_users: Callable[[], Iterable[str]],
        interval: float = HEARTBEAT_INTERVAL,
        expiry: float = NODE_EXPIRY,
    ) -> None:
        self.setName("nodes")
        self.redis = redis
        self.node_id = node_id
        self.clock = clock
        self._local_users = local_users
        self.interval = interval
        self.expiry = expiry
        self._epoch = ""
        self._seq = 0
        #: Our presence in Redis may be wrong (a change failed): announce.
        self._dirty = True
        self._beating = False
        self._last_beat: float | None = None
        #: Other nodes believed alive, and what each has online.
        self._live: set[str] = set()
        self._mirrors: dict[str, _Mirror] = {}
        #: Remote users -> on how many other nodes they are online.
        self._remote: dict[str, int] = {}
        #: Grows whenever a user comes online or goes offline elsewhere
        #: (ClusterBus.presence_version).
        self.presence_version = 0
        self._snapshots: set[str] = set()
        self._died: list[Callable[[str], Any]] = []
        self._appeared: list[Callable[[str], Any]] = []
        self._loop = LoopingCall(self._heartbeat)
        self._loop.clock = clock

    # -- lifecycle -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)
        self.redis.on_commands_ready(self._heartbeat)

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if not self.redis.connected:
            return None
        # Leave at once rather than be timed out: our users go offline now.
        d = self.redis.execute("ZREM", NODES_KEY, self.node_id)
        d.addCallback(
            lambda _: self.redis.execute("DEL", PRESENCE_PREFIX + self.node_id)
        )
        d.addErrback(lambda f: None)  # best effort; expiry covers it
        return d

    # -- callbacks -------------------------------------------------------------

    def on_node_died(self, callback: Callable[[str], Any]) -> None:
        """``callback(node_id)`` when a node this one saw alive is gone."""
        self._died.append(callback)

    def on_node_appeared(self, callback: Callable[[str], Any]) -> None:
        self._appeared.append(callback)

    @property
    def live_nodes(self) -> list[str]:
        """Every node believed alive, this one included."""
        return sorted({self.node_id, *self._live})

    # -- presence queries ------------------------------------------------------

    def online_elsewhere(self, user_id: str) -> bool:
        return user_id in self._remote

    def remote_users(self) -> Iterable[str]:
        return self._remote.keys()

    def nodes_of(self, user_id: str) -> list[str]:
        """The other nodes where ``user_id`` is online."""
        if user_id not in self._remote:
            return []
        return sorted(n for n, m in self._mirrors.items() if user_id in m.users)

    # -- our presence ----------------------------------------------------------

    def user_online(self, user_id: str) -> None:
        self._change("+", user_id)

    def user_offline(self, user_id: str) -> None:
        self._change("-", user_id)

    def _change(self, op: str, user_id: str) -> None:
        if self._dirty or not self.redis.connected:
            self._dirty = True  # the next heartbeat announces everyone
            return
        self._seq += 1
        d = self.redis.eval(
            _CHANGE,
            [PRESENCE_PREFIX + self.node_id, VERSIONS_KEY],
            [
                self.node_id,
                f"{self._epoch}.{self._seq}",
                op,
                user_id,
                PRESENCE_CHANNEL,
            ],
        )
        d.addErrback(self._change_failed)

    def _change_failed(self, failure) -> None:
        self._dirty = True
        self.log.warn(
            "presence change not recorded ({error}); announcing again",
            error=failure.getErrorMessage(),
        )

    async def _announce(self) -> None:
        self._dirty = False
        self._epoch = "e" + os.urandom(6).hex()  # never reads as a number
        self._seq = 0
        users = list(self._local_users())
        try:
            await self.redis.eval(
                _ANNOUNCE,
                [PRESENCE_PREFIX + self.node_id, VERSIONS_KEY],
                [self.node_id, f"{self._epoch}.0", *users],
            )
        except Exception:
            self._dirty = True
            raise
        self.log.info(
            "node {node} announced {count} online users",
            node=self.node_id,
            count=len(users),
        )

    # -- heartbeat -------------------------------------------------------------

    def _heartbeat(self) -> None:
        if self._beating:
            return
        self._beating = True
        d = Deferred.fromCoroutine(self._beat())
        d.addErrback(self._beat_failed)
        d.addBoth(self._beat_done)

    def _beat_done(self, _: Any) -> None:
        self._beating = False

    def _beat_failed(self, failure) -> None:
        if (
            self._last_beat is not None
            and self.clock.seconds() - self._last_beat > self.expiry
        ):
            # Cut off from Redis: what we know of other nodes is stale; show
            # only our own users until the heartbeat works again.
            self._forget_all()
        self.log.debug("heartbeat failed: {error}", error=failure.getErrorMessage())

    async def _beat(self) -> None:
        if not self.redis.connected:
            raise ConnectionError("Redis is not connected")
        added, live, versions = await self.redis.eval(
            _HEARTBEAT,
            [NODES_KEY, VERSIONS_KEY],
            [self.node_id, int(self.expiry * 1000), PRESENCE_PREFIX],
        )
        self._last_beat = self.clock.seconds()
        others = {}
        own_epoch = ""
        for node, version in zip(live, versions, strict=True):
            node = node.decode() if isinstance(node, bytes) else str(node)
            if node == self.node_id:
                own_epoch = _version(version)[0]
            else:
                others[node] = _version(version)
        # Our set is gone or not ours (we were expired, Redis restarted; the
        # reply that said so may have been lost with an aborted connection).
        if int(added) or self._dirty or own_epoch != self._epoch:
            await self._announce()
        for node in self._live - others.keys():
            self._node_gone(node)
        for node in others.keys() - self._live:
            self._live.add(node)
            self.log.info("node {node} is alive", node=node)
            self._notify(self._appeared, node)
        for node, (epoch, seq) in others.items():
            mirror = self._mirrors.get(node)
            if mirror is None or (mirror.epoch, mirror.seq) != (epoch, seq):
                self._snapshot(node)

    def _node_gone(self, node: str) -> None:
        self._live.discard(node)
        self._drop_mirror(node)
        self.log.warn("node {node} is gone; its users are offline", node=node)
        self._notify(self._died, node)

    def _notify(self, callbacks: list[Callable[[str], Any]], node: str) -> None:
        for callback in callbacks:
            try:
                result = callback(node)
            except Exception:
                self.log.failure("node callback for {node} raised", node=node)
                continue
            if isinstance(result, Deferred):
                log_errors(result, "node callback")

    def _forget_all(self) -> None:
        for node in list(self._mirrors):
            self._drop_mirror(node)
        self._live.clear()

    # -- mirrors of other nodes ------------------------------------------------

    def _drop_mirror(self, node: str) -> None:
        mirror = self._mirrors.pop(node, None)
        if mirror is not None:
            for user in mirror.users:
                self._uncount(user)

    def _count(self, user: str) -> None:
        count = self._remote.get(user, 0)
        if not count:
            self.presence_version += 1
        self._remote[user] = count + 1

    def _uncount(self, user: str) -> None:
        left = self._remote.get(user, 0) - 1
        if left > 0:
            self._remote[user] = left
        elif self._remote.pop(user, None) is not None:
            self.presence_version += 1

    def presence_message(self, data: bytes) -> None:
        """A delta from ``dk:presence``: ``node version op user``."""
        try:
            node, version, op, user = data.decode().split(" ", 3)
        except ValueError:
            self.log.warn("malformed presence message ignored")
            return
        if node == self.node_id or node not in self._live:
            return  # a node not (yet) seen alive is fetched once it is
        epoch, seq = _version(version)
        mirror = self._mirrors.get(node)
        if mirror is None or op == "*" or mirror.epoch != epoch:
            self._snapshot(node)
            return
        if seq <= mirror.seq:
            return  # already in the snapshot we have
        if seq != mirror.seq + 1:
            self._snapshot(node)  # a delta was lost
            return
        mirror.seq = seq
        if op == "+":
            if user not in mirror.users:
                mirror.users.add(user)
                self._count(user)
        elif user in mirror.users:
            mirror.users.discard(user)
            self._uncount(user)

    def _snapshot(self, node: str) -> None:
        if node in self._snapshots or not self.redis.connected:
            return
        self._snapshots.add(node)
        d = self.redis.eval(_SNAPSHOT, [PRESENCE_PREFIX + node, VERSIONS_KEY], [node])
        d.addCallback(self._snapshot_arrived, node)
        d.addErrback(
            lambda f: self.log.debug(
                "presence of {node} not fetched: {error}",
                node=node,
                error=f.getErrorMessage(),
            )
        )
        d.addBoth(lambda _: self._snapshots.discard(node))

    def _snapshot_arrived(self, reply: list, node: str) -> None:
        if node not in self._live:
            return
        version, members = reply
        epoch, seq = _version(version)
        mirror = self._mirrors.get(node)
        if mirror is not None and mirror.epoch == epoch and seq < mirror.seq:
            return  # deltas already took us further
        self._drop_mirror(node)
        users = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
        self._mirrors[node] = _Mirror(epoch, seq, users)
        for user in users:
            self._count(user)
