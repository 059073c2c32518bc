"""A node's two Redis connections: one for commands, one for pub/sub.

Both are txredisapi pool slots: a ``ClientService`` that reconnects forever
with exponential backoff (here from RETRY_INITIAL up to RETRY_MAX seconds,
so a restarted Redis is back in use within a couple of seconds).  What
txredisapi does not do, this does:

* **state**: :attr:`RedisService.connected` says whether commands can be
  sent now; :meth:`RedisService.execute` fails at once instead of queueing
  a command until some later reconnect (the lazy handler's behaviour, which
  lets memory grow while Redis is down).
* **subscriptions survive reconnects**: the channels asked for are kept
  here and subscribed again on every new subscriber connection; once all are
  confirmed the ``on_resubscribed`` hooks run.  Pub/sub drops whatever was
  published while a subscriber was away, so a hook must recover from the
  source of truth (the bus rescans its users' backlogs, as Synapse's Redis
  replication resends its positions after a reconnect).
* **a silent server is a dead one**: commands time out after REPLY_TIMEOUT
  and the subscriber is pinged every PING_INTERVAL; either aborts the
  connection (a SIGSTOPped Redis keeps its sockets open), which then
  reconnects.
* **a failed handshake is retried**: txredisapi gives up reconnecting for
  good when AUTH or SELECT on a new connection fails, and a paused Redis
  accepts the TCP connection but answers neither in time; so a node would
  stay cut off after Redis resumed.  Here only stopping the service stops
  the reconnecting; a handshake refusal (a wrong password) is logged and
  retried with the same backoff, so fixing Redis is enough.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from dkserver.cluster.url import RedisUrl

#: Seconds before the first reconnection attempt, and the cap on the backoff.
RETRY_INITIAL = 0.2
RETRY_MAX = 2.0
#: A command unanswered this long aborts the command connection.
REPLY_TIMEOUT = 3.0
#: The subscriber connection is pinged this often, and dropped when a ping
#: is unanswered after PING_TIMEOUT.
PING_INTERVAL = 1.0
PING_TIMEOUT = 3.0
CONNECT_TIMEOUT = 3

log = Logger()


def log_errors(d: Deferred, what: str) -> Deferred:
    """Fire-and-forget: a failure is logged, never left unhandled."""
    d.addErrback(lambda f: log.failure("{what} failed", f, what=what))
    return d


def channel(prefix: bytes, name: str) -> bytes:
    """``dk:u:<user>``, ``dk:node:<node>``: a channel named after something."""
    return prefix + name.encode()


class _Factory(txredisapi.RedisFactory):
    """A one-connection txredisapi pool that tells its owner when the
    connection becomes usable and when it is gone."""

    initialDelay = RETRY_INITIAL
    maxDelay = RETRY_MAX

    def __init__(self, owner: RedisService, kind: str, **kwargs: Any) -> None:
        super().__init__(None, kwargs.pop("dbid", None), 1, isLazy=True, **kwargs)
        self._owner = owner
        self._kind = kind

    def stopTrying(self) -> Deferred:
        """txredisapi's reaction to a failed AUTH/SELECT: kept reconnecting
        (see the module doc) unless the service itself is stopping."""
        if self._owner._stopping:
            return super().stopTrying()
        self._owner._handshake_failed(self._kind)
        return succeed(None)

    def addConnection(self, conn) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self._owner._ready(self._kind, conn)

    def delConnection(self, conn) -> None:
        super().delConnection(conn)
        self._owner._lost(self._kind, conn)


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message) -> None:
        self.factory._owner._message(channel, message)


class _SubscriberFactory(_Factory):
    protocol = _Subscriber


class RedisService(Service):
    """The Redis connections of one node, built from ``--redis``."""

    log = Logger()

    def __init__(self, url: RedisUrl, clock: Any) -> None:
        self.setName("redis")
        self.url = url
        self.clock = clock
        self._command_factory = _Factory(
            self,
            "commands",
            dbid=url.db or None,  # 0 is where a connection starts: no SELECT
            password=url.password,
            replyTimeout=REPLY_TIMEOUT,
            convertNumbers=False,
        )
        # Pub/sub is not per database; replies stay bytes (frames are bytes).
        self._subscriber_factory = _SubscriberFactory(
            self,
            "subscriber",
            password=url.password,
            charset=None,
            convertNumbers=False,
        )
        #: Duck-typed txredisapi connection (``.eval``, ``.execute_command``
        #: ...) for parts that prefer waiting through a reconnect to failing.
        self.commands = self._command_factory.handler
        self._command: Any = None
        self._subscriber: Any = None
        self._channels: set[bytes] = set()
        self._on_message: Callable[[bytes, bytes], None] = lambda c, m: None
        self._on_commands: list[Callable[[], None]] = []
        self._on_resubscribed: list[Callable[[], None]] = []
        self._on_subscriber_lost: list[Callable[[], None]] = []
        self._ping_call = None
        self._ping_deadline = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for factory in (self._command_factory, self._subscriber_factory):
            factory.startConnecting(
                HostnameEndpoint(
                    self.clock, self.url.host, self.url.port, timeout=CONNECT_TIMEOUT
                )
            )
        self.log.info("connecting to Redis {url}", url=self.url.redacted)

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        self._stop_pings()
        return gatherResults(
            [
                self._command_factory.disconnect(),
                self._subscriber_factory.disconnect(),
            ],
            consumeErrors=True,
        )

    # -- hooks -----------------------------------------------------------------

    def set_message_handler(self, handler: Callable[[bytes, bytes], None]) -> None:
        """``handler(channel, data)`` for every pub/sub message."""
        self._on_message = handler

    def on_commands_ready(self, hook: Callable[[], None]) -> None:
        """Called whenever a (new) command connection is usable."""
        self._on_commands.append(hook)

    def on_resubscribed(self, hook: Callable[[], None]) -> None:
        """Called when a new subscriber connection has every channel again."""
        self._on_resubscribed.append(hook)

    def on_subscriber_lost(self, hook: Callable[[], None]) -> None:
        self._on_subscriber_lost.append(hook)

    # -- commands --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Commands can be sent now."""
        return self._command is not None

    @property
    def subscribed(self) -> bool:
        return self._subscriber is not None

    def execute(self, *args: Any) -> Deferred:
        """Run a command now, or fail at once when Redis is not connected."""
        conn = self._command
        if conn is None:
            return fail(txredisapi.ConnectionError("Redis is not connected"))
        try:
            return conn.execute_command(*args)
        except txredisapi.ConnectionError:
            return fail()

    def eval(self, script: str, keys: list, args: list) -> Deferred:
        """A Lua script (EVALSHA, loaded on first use per connection)."""
        conn = self._command
        if conn is None:
            return fail(txredisapi.ConnectionError("Redis is not connected"))
        return conn.eval(script, keys, args)

    # -- subscriptions ---------------------------------------------------------

    def subscribe(self, channel: bytes) -> Deferred:
        """Keep ``channel`` subscribed; fires True once Redis confirmed it,
        False when no subscriber is connected now (it is subscribed, and the
        ``on_resubscribed`` hooks run, when one is)."""
        self._channels.add(channel)
        conn = self._subscriber
        if conn is None:
            return succeed(False)
        return self._subscribe_on(conn, channel)

    def unsubscribe(self, channel: bytes) -> None:
        self._channels.discard(channel)
        conn = self._subscriber
        if conn is None:
            return
        try:
            d = conn.execute_command(b"UNSUBSCRIBE", channel)
        except txredisapi.ConnectionError:
            return  # a lost connection drops the subscription anyway
        d.addErrback(lambda f: None)

    def _subscribe_on(self, conn, channel: bytes) -> Deferred:
        # One channel per command: txredisapi pairs each reply with one
        # waiting command, and SUBSCRIBE answers once per channel.
        try:
            d = conn.execute_command(b"SUBSCRIBE", channel, apply_timeout=False)
        except txredisapi.ConnectionError:
            return succeed(False)
        d.addCallbacks(lambda _: True, lambda f: False)
        return d

    # -- connection events -----------------------------------------------------

    def _ready(self, kind: str, conn) -> None:
        if kind == "commands":
            self._command = conn
            self.log.info("Redis command connection ready")
            for hook in self._on_commands:
                _call(hook, "Redis commands-ready hook")
            return
        self._subscriber = conn
        self._start_pings(conn)
        channels = sorted(self._channels)
        d = gatherResults([self._subscribe_on(conn, c) for c in channels])
        d.addCallback(self._resubscribed, conn, len(channels))
        log_errors(d, "Redis resubscribe")

    def _resubscribed(self, results: list[bool], conn, count: int) -> None:
        if conn is not self._subscriber or not all(results):
            return  # lost again meanwhile: the next connection does this
        self.log.info("Redis subscriber ready ({count} channels)", count=count)
        for hook in self._on_resubscribed:
            _call(hook, "Redis resubscribed hook")

    def _handshake_failed(self, kind: str) -> None:
        # txredisapi logs the reason (legacy log.msg) and drops the
        # connection; its slot then reconnects after the usual delay.
        self.log.warn(
            "Redis {kind} connection setup (AUTH/SELECT) failed; retrying",
            kind=kind,
        )

    def _lost(self, kind: str, conn) -> None:
        if kind == "commands":
            if conn is self._command:
                self._command = None
                if not self._stopping:
                    self.log.warn("Redis command connection lost; reconnecting")
            return
        if conn is self._subscriber:
            self._subscriber = None
            self._stop_pings()
            if not self._stopping:
                self.log.warn("Redis subscriber connection lost; reconnecting")
            for hook in self._on_subscriber_lost:
                _call(hook, "Redis subscriber-lost hook")

    def _message(self, channel: bytes, data: bytes) -> None:
        try:
            self._on_message(channel, data)
        except Exception:
            self.log.failure("handling a message on {channel}", channel=channel)

    # -- keepalive -------------------------------------------------------------

    def _start_pings(self, conn) -> None:
        self._stop_pings()
        self._ping_call = self.clock.callLater(PING_INTERVAL, self._ping, conn)

    def _stop_pings(self) -> None:
        for call in (self._ping_call, self._ping_deadline):
            if call is not None and call.active():
                call.cancel()
        self._ping_call = self._ping_deadline = None

    def _ping(self, conn) -> None:
        self._ping_call = None
        if conn is not self._subscriber:
            return
        self._ping_deadline = self.clock.callLater(
            PING_TIMEOUT, self._ping_timed_out, conn
        )
        try:
            d = conn.execute_command(b"PING", apply_timeout=False)
        except txredisapi.ConnectionError:
            return
        d.addBoth(self._pong, conn)

    def _pong(self, result: Any, conn) -> None:
        if isinstance(result, Failure) or conn is not self._subscriber:
            return
        if self._ping_deadline is not None and self._ping_deadline.active():
            self._ping_deadline.cancel()
        self._ping_deadline = None
        self._ping_call = self.clock.callLater(PING_INTERVAL, self._ping, conn)

    def _ping_timed_out(self, conn) -> None:
        self._ping_deadline = None
        if conn is self._subscriber and conn.transport is not None:
            self.log.warn("Redis subscriber unanswered; reconnecting")
            conn.transport.abortConnection()


def _call(hook: Callable[[], Any], what: str) -> None:
    try:
        result = hook()
    except Exception:
        log.failure("{what} raised", what=what)
        return
    if isinstance(result, Deferred):
        log_errors(result, what)
