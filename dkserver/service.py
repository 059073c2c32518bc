"""The root service: builds every part from the configuration and owns the
shutdown order.

``MultiService.stopService`` stops children concurrently; a messaging server
must not close its database while requests are still writing, so
:class:`DkService` stops its parts one after the other: stop listening, let
in-flight requests finish, stop timers, close the database pool.
"""

from __future__ import annotations

import gc
import os
import signal
import time

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.components import Componentized

from dkserver.auth.handler import AuthHandler
from dkserver.auth.revocation import AccountWatch, Revocations
from dkserver.auth.secret import SecretError, load_keys
from dkserver.auth.tokens import KeyRing, TokenIssuer
from dkserver.cluster.analytics import DeadNodeSessions
from dkserver.cluster.secret import database_keys
from dkserver.cluster.service import build_cluster
from dkserver.config import Config, endpoint_description
from dkserver.gauges import StoreGauges
from dkserver.health import Readiness
from dkserver.limits import build_limits
from dkserver.listening import ListeningService
from dkserver.metrics import Metrics
from dkserver.periodic import periodic_service
from dkserver.proxyproto import ProxyProtocolEndpoint
from dkserver.ratelimit import BucketRegistry
from dkserver.retention import Policy, Pruner, PruneService
from dkserver.store import Store, StoreError
from dkserver.store.backlog import FirstPageReads
from dkserver.store.quota import PendingQuota
from dkserver.store.writer import GroupWriter
from dkserver.systemd import Notifier, SystemdNotify, watchdog_interval
from dkserver.tls import LoadedCertificate, ServerTLS
from dkserver.web.app import DkApp
from dkserver.web.pages import ClientDownload
from dkserver.web.redirect import RedirectResource
from dkserver.web.site import DkSite
from dkserver.ws.factory import DkWebSocketFactory
from dkserver.ws.forward import ForwardBroker
from dkserver.ws.hub import Hub
from dkserver.ws.sessions import LocalBus

#: Redirect requests carry no meaningful body.
REDIRECT_MAX_BODY = 64 * 1024


def tune_gc() -> None:
    """Fewer, cheaper garbage collections on the messaging path.

    Per-message objects are freed by reference counting; the cyclic collector
    mostly re-scans long-lived objects (modules, connections), and a full
    collection over tens of thousands of connections' objects pauses the
    reactor for tens of milliseconds.  Freeze what startup created and collect
    the young generation less often.  Called by ``makeService`` (one service
    per process), not by tests that build many services in one process.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


#: Reads of the users into the cache at start (see DkService._warm_users).
WARM_ATTEMPTS = 2


class DkService(MultiService):
    """Everything one dkserver process runs."""

    log = Logger()
    #: ``--log-format json``: the observer twistd is to log to (set by
    #: makeService; None: twistd's own text log).
    log_observer: ILogObserver | None = None
    #: A SIGTERM or SIGINT was passed on to the reactor (_guard_stop_signals).
    _stop_signalled = False

    def __init__(self, config: Config, reactor) -> None:
        super().__init__()
        self.setName("dkserver")
        self.config = config
        self.reactor = reactor
        self.metrics = Metrics(config.node_id)

        #: None while the secret is still to be read from the database
        #: (`_migrate`); the auth handler holds requests until then.
        self.tokens: TokenIssuer | None = None
        if not config.secret_in_database:
            secret, previous, warnings = load_keys(
                config.jwt_secret, config.jwt_secret_path
            )
            for warning in warnings:
                self.log.warn("{warning}", warning=warning)
            self.tokens = TokenIssuer(
                KeyRing(secret, previous), reactor, issuer=config.token_issuer
            )
        self.tls = ServerTLS(
            config.cert_path,
            config.key_path,
            on_loaded=self._certificate_loaded,
            on_refused=self.metrics.tls_reloads.labels(result="refused").inc,
        )

        self.store = Store.create(
            config.database,
            reactor,
            config.sqlite_synchronous,
            pool_size=config.db_pool_size,
            statement_timeout=config.db_statement_timeout,
            connect_timeout=config.db_connect_timeout,
            read_pool_size=config.db_read_pool_size,
        )
        # The one place a cluster is chosen: with --redis the bus is Redis's,
        # and so are the limits (built on its command connection).
        self.cluster = build_cluster(
            config, reactor, lambda payload: self.hub.prepare(payload)
        )
        self.limits = build_limits(config, reactor, self.cluster)
        self.challenges = self.limits.challenges
        self.login_ip_limits = self.limits.login_ip
        self.login_user_limits = self.limits.login_user
        #: Revoked users, kept fresh by `account_watch`; the auth handler
        #: gets its token issuer only once they are loaded (`_migrate`).
        self.revocations = Revocations()
        self.auth = AuthHandler(
            self.store,
            self.challenges,
            None,
            self.login_ip_limits,
            self.login_user_limits,
            self.metrics,
            self.revocations,
            config.registration,
        )
        self.quota = PendingQuota(
            config.pending_quota_messages, config.pending_quota_bytes
        )
        self.writer = GroupWriter(
            self.store.pool,
            reactor,
            node_id=config.node_id,
            commit_seconds=self.metrics.commit_seconds.observe,
            quota=self.quota,
        )
        self.metrics.track_store(lambda: self.writer.writable)
        self.gauges = StoreGauges(self.store, self.writer, self.metrics, reactor)
        # In a cluster the limits are Redis's; their local fallbacks are the
        # registries that hold buckets (and evict) in this process.
        self.metrics.track_rate_limits(
            {
                name: getattr(part, "fallback", part)
                for name, part in (
                    ("login_ip", self.limits.login_ip),
                    ("login_user", self.limits.login_user),
                    ("messages", self.limits.messages),
                    ("writes", self.limits.writes),
                )
                if isinstance(getattr(part, "fallback", part), BucketRegistry)
            }
        )
        self.bus = LocalBus() if self.cluster is None else self.cluster.bus
        self.message_limits = self.limits.messages
        self.forward = ForwardBroker(reactor, config.forward_timeout)
        self.hub = Hub(
            self.store,
            self.writer,
            self.bus,
            self.message_limits,
            self.forward,
            self.metrics,
            reactor,
            caps=self.limits.caps,
            # Half the pool's connections at most, and at least one: on
            # PostgreSQL the group writer keeps the rest; SQLite's one
            # connection serves the two in turn.
            first_reads=FirstPageReads(
                self.store.messages,
                reactor,
                trips=self.store.pool.connections // 2,
                on_read=self.metrics.backlog_reads.inc,
                on_trip=self.metrics.backlog_read_trips.inc,
            ),
        )
        #: Whose sessions this process closes when it starts and stops: in a
        #: cluster its own (and those written before nodes were recorded);
        #: a single process every session, whatever node id it had before.
        self.session_owner = None if self.cluster is None else config.node_id
        #: For the node registry: a dead node's sessions are closed here.
        self.dead_node_sessions = DeadNodeSessions(
            self.store.analytics, config.node_id, self.hub.time_ns
        )
        if self.cluster is not None:
            self.cluster.nodes.on_node_died(self.dead_node_sessions.node_died)
        self.ws_factory = DkWebSocketFactory(
            config, self.hub, reactor, self.revocations
        )
        self.account_watch = AccountWatch(
            self.store, self.revocations, self.bus, self._reload_keys
        )
        self._migrated = False
        #: The start-up read of the users into the cache (see _warm_users).
        self._warming: Deferred | None = None
        self.readiness = Readiness(
            self.writer,
            reactor,
            migrated=lambda: self._migrated,
            closing=lambda: self.hub.closing,
            redis=None if self.cluster is None else self.cluster.redis,
        )
        self.write_limits = self.limits.writes
        self.client_download = ClientDownload(config, reactor)
        self.client_download.setServiceParent(self)
        self.app = DkApp(
            config,
            self.store,
            self.auth,
            self.hub,
            self.ws_factory,
            self.metrics,
            self.client_download,
            write_limits=self.write_limits,
            readiness=self.readiness,
            public_read_limits=self.limits.public_reads,
            clock=reactor,
        )
        self.site = DkSite(
            self.app.resource(),
            max_body=config.max_body,
            idle_timeout=config.http_timeout,
            request_deadline=config.http_timeout * 2,
            reactor=reactor,
        )

        https_endpoint = serverFromString(
            reactor, endpoint_description("https", config.https)
        )
        if config.proxy_protocol:
            # The header comes before the TLS bytes: the outermost layer.
            https_endpoint = ProxyProtocolEndpoint(https_endpoint)
            self.log.info(
                "https expects a PROXY protocol header on every connection "
                "(DK_PROXY_PROTOCOL): reachable from the load balancer only"
            )
        self.https = ListeningService(
            "https", https_endpoint, TLSMemoryBIOFactory(self.tls, False, self.site)
        )
        self.https.setServiceParent(self)
        self.http: ListeningService | None = None
        if config.http is not None:
            redirect_site = DkSite(
                RedirectResource(self.https.bound_port),
                max_body=REDIRECT_MAX_BODY,
                idle_timeout=config.http_timeout,
                request_deadline=config.http_timeout * 2,
                reactor=reactor,
            )
            http_endpoint = serverFromString(
                reactor, endpoint_description("http", config.http)
            )
            self.http = ListeningService("http", http_endpoint, redirect_site)
            self.http.setServiceParent(self)

        self.timers = MultiService()
        self.timers.setName("timers")
        for service in (*self.limits.services, *self.gauges.services()):
            service.setServiceParent(self.timers)
        periodic_service(
            "tls-reload", config.tls_reload_interval, self.tls.poll, reactor
        ).setServiceParent(self.timers)
        self.account_watch.service(config.revocation_poll, reactor).setServiceParent(
            self.timers
        )
        self.pruner = Pruner(
            self.store,
            Policy.from_config(config),
            self.metrics,
            time_ns=lambda: self.hub.time_ns(),
            quota=self.quota,
            clock=reactor,
            on_pending_dropped=self.gauges.pending_removed,
        )
        if config.prune_interval is not None:
            PruneService(
                self.pruner,
                config.prune_interval,
                reactor,
                ready=lambda: self._ready.called and not self._ready_failed,
            ).setServiceParent(self.timers)
        self.timers.setServiceParent(self)
        if self.cluster is not None:
            self.cluster.forwards.serve = self.hub.answer_for_node
            self.cluster.setServiceParent(self)
        # sd_notify: a no-op unless systemd (Type=notify) set NOTIFY_SOCKET.
        self.systemd = SystemdNotify(
            Notifier.from_environ(os.environ),
            self.readiness,
            self.ready,
            reactor,
            watchdog=watchdog_interval(os.environ, os.getpid()),
            description=f"HTTPS on {config.https}",
        )
        self.systemd.setServiceParent(self)

    def _certificate_loaded(self, loaded: LoadedCertificate, reloaded: bool) -> None:
        self.metrics.tls_expiry.set(loaded.not_after.timestamp())
        if reloaded:
            self.metrics.tls_reloads.labels(result="loaded").inc()

    def install_signal_handlers(self) -> None:
        """SIGHUP reloads the certificate and key (twistd leaves SIGHUP alone);
        once the reactor runs, a repeated SIGTERM or SIGINT is only logged
        (`_guard_stop_signals`).  Called by ``makeService`` only: tests build
        many services in one process and must not take over its signals."""

        def on_sighup(signum, frame) -> None:
            self.reactor.callFromThread(self.tls.reload)

        signal.signal(signal.SIGHUP, on_sighup)
        # The reactor installs its own SIGTERM and SIGINT handlers as it
        # starts, before what callWhenRunning runs.
        self.reactor.callWhenRunning(self._guard_stop_signals)

    def _guard_stop_signals(self) -> None:
        """Pass the first SIGTERM or SIGINT to the reactor's handler, and only
        log one that comes while the server is already stopping.  The
        reactor's handler would call ``reactor.stop()`` again, which raises
        ``ReactorNotRunning``: a critical traceback in the log of an
        ordinary stop (a second Ctrl-C, or ``timeout``, which signals the
        process and then its process group)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            passed_on = signal.getsignal(signum)
            if not callable(passed_on):
                continue  # SIG_DFL or SIG_IGN: the reactor left it alone

            def guarded(number, frame, passed_on=passed_on) -> None:
                if self._stop_signalled or not self.running:
                    self.log.info(
                        "{signal} again while shutting down; the shutdown goes on",
                        signal=signal.Signals(number).name,
                    )
                    return
                self._stop_signalled = True
                passed_on(number, frame)

            signal.signal(signum, guarded)

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        # twistd attaches the service to its Application and only then starts
        # logging, to the application's ILogObserver if it has one (the way a
        # .tac chooses its observer): that is how --log-format reaches it.
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)

    def startService(self) -> None:
        self._started_ns = self.hub.time_ns()
        self._ready_failed = False
        self._ready = Deferred.fromCoroutine(self._migrate())
        self._ready.addErrback(self._fatal)
        super().startService()

    async def _migrate(self) -> None:
        await self.store.migrate()
        if self.tokens is None:
            secret, previous = await database_keys(self.store.settings)
            self.tokens = TokenIssuer(
                KeyRing(secret, previous),
                self.reactor,
                issuer=self.config.token_issuer,
            )
        # No token is checked before the revoked users are known.
        await self.account_watch.load()
        self.auth.use_tokens(self.tokens)
        # Sessions a crash left open end now (their duration is an upper bound).
        closed = await self.store.analytics.end_open_sessions(
            self.hub.time_ns(),
            started_before_ns=self._started_ns,
            node_id=self.session_owner,
        )
        if closed:
            self.log.info("closed {count} sessions left open", count=closed)
        self.gauges.recount()  # the backlog gauge's starting point
        self._migrated = True
        self.log.info("database {path} ready", path=self.config.database.redacted)
        # Not awaited: requests are served meanwhile (a user not read yet
        # is read on its own, as always).
        self._warming = Deferred.fromCoroutine(self._warm_users())

    async def _warm_users(self) -> None:
        """Read the users into the cache in one query, so that the clients
        reconnecting after a restart log in without a database trip each."""
        started = time.monotonic()
        try:
            # An account change during a read discards it: once more.
            for _ in range(WARM_ATTEMPTS):
                added = await self.store.users.warm()
                if added is not None:
                    break
        except Exception:
            if self.running:
                self.log.failure(
                    "cannot read the users into the cache; each is read at its"
                    " first login"
                )
            return
        if added is None:
            self.log.info(
                "accounts changed while the users were read into the cache;"
                " each is read at its first login"
            )
            return
        self.log.info(
            "read {count} users into the cache in {seconds:.3f} s",
            count=added,
            seconds=time.monotonic() - started,
        )

    async def _reload_keys(self) -> None:
        """A secret rotation (``dkserver token rotate-secret``) was committed."""
        config = self.config
        if config.secret_in_database:
            secret, previous = await database_keys(self.store.settings)
        elif config.jwt_secret:
            return  # JWT_SECRET: rotated by changing it and restarting
        else:
            secret, previous, _ = await deferToThread(
                load_keys, None, config.jwt_secret_path
            )
        if self.tokens is not None:
            self.tokens.use_keys(KeyRing(secret, previous))

    def _fatal(self, failure) -> None:
        self._ready_failed = True
        if failure.check(SecretError):
            self.log.error("{error}; stopping", error=str(failure.value))
        else:
            self.log.failure("cannot open the database; stopping", failure)
        if self.reactor.running:
            self.reactor.stop()

    async def ready(self) -> None:
        """Wait until the database is migrated and every listener is bound."""
        await self._ready
        await self.https.when_listening()
        if self.http is not None:
            await self.http.when_listening()

    async def _close_websockets(self) -> None:
        """Close every session with 1001 and wait (bounded) for them to go."""
        conns = self.bus.all_connections()
        if not conns:
            return
        self.log.info("closing {count} WebSocket connections", count=len(conns))
        for conn in conns:
            conn.going_away()
        waited = 0.0
        while self.bus.connection_count() and waited < self.config.shutdown_grace:
            await deferLater(self.reactor, 0.05)
            waited += 0.05
        for conn in self.bus.all_connections():
            conn.dropConnection(abort=True)
        # An abort finishes on a later reactor turn; wait for the teardown so
        # no session writes after the database is closed.
        await self._wait_until(lambda: not self.bus.connection_count(), 2.0)

    async def _wait_until(self, condition, limit: float) -> bool:
        waited = 0.0
        while not condition():
            if waited >= limit:
                return False
            await deferLater(self.reactor, 0.02)
            waited += 0.02
        return True

    def stopService(self) -> Deferred:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.running = 0
        self.systemd.stopService()  # STOPPING=1 first: systemd waits for us
        self.hub.closing = True
        self.log.info("shutting down: closing listeners")
        for listener in (self.http, self.https):
            if listener is not None and listener.running:
                await listener.stopService()
        await self._close_websockets()
        # Timers stop while Redis is still connected: the shared limits
        # remove this node's connection entries as they stop.
        await self.timers.stopService()
        if self.cluster is not None:
            await self.cluster.stop()  # leave the cluster: our users go offline
        # Frames read before the close are stored before the database closes.
        if not await self._wait_until(
            lambda: not self.hub.unhandled_frames, self.config.shutdown_grace
        ):
            self.log.warn(
                "{count} frames still unhandled at shutdown",
                count=self.hub.unhandled_frames,
            )
        left = await self.site.drain(self.reactor, self.config.shutdown_grace)
        if left:
            self.log.warn("{count} requests still running at shutdown", count=left)
        await self.writer.close()
        try:
            await self.store.analytics.end_open_sessions(
                self.hub.time_ns(), node_id=self.session_owner
            )
        except StoreError as e:  # a full disk, say: the next start closes them
            self.log.warn(
                "open sessions not closed at shutdown ({reason}); the next start"
                " closes them",
                reason=str(e),
            )
        await self.store.close()
        self.systemd.stopped()
        self.log.info("shutdown complete")
