"""The REST routes of PROTOCOL.md, as a Klein app on an object.

Routes stay thin: parse, call a handler or store method, render.  Every error
becomes the JSON shape of PROTOCOL.md in :meth:`DkApp.api_error`; anything
unexpected is logged and answered with a generic 500.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException

from dkserver.auth.handler import AuthHandler
from dkserver.config import Config
from dkserver.health import Readiness
from dkserver.metrics import CONTENT_TYPE_LATEST, Metrics
from dkserver.peers import peer_host
from dkserver.ratelimit import BucketRegistry, settled
from dkserver.store import Store, StoreUnavailable, TooManyApis
from dkserver.store.accounts import DELETED
from dkserver.web import documents, trackers
from dkserver.web.eager import Waiting, first_step
from dkserver.web.files import OperatorFiles
from dkserver.web.pages import ClientDownload, Pages
from dkserver.web.presence import ActiveUsers
from dkserver.web.responses import (
    ApiError,
    BadRequest,
    NotFound,
    TooManyRequests,
    error_response,
    json_response,
    read_json,
    read_json_object,
    text_response,
)
from dkserver.web.site import Utf8Urls
from dkserver.ws.forward import ForwardTimeout, NotConnected
from dkserver.ws.hub import Hub
from dkserver.ws.upgrade import UpgradeResource, check_origin


def client_ip(request: IRequest) -> str:
    return peer_host(request.getClientAddress())


def bearer_token(request: IRequest) -> str | None:
    header = request.getHeader(b"authorization")
    if header and header[:7].lower() == b"bearer ":
        return header[7:].strip().decode("latin-1")
    return None


class DkApp:
    """Every HTTPS route; dependencies are injected so tests can swap them."""

    app = Klein()
    log = Logger()

    def __init__(
        self,
        config: Config,
        store: Store,
        auth: AuthHandler,
        hub: Hub,
        ws_factory: Any,
        metrics: Metrics,
        client: ClientDownload,
        *,
        write_limits: BucketRegistry,
        readiness: Readiness,
        public_read_limits: BucketRegistry | Any,
        clock: Any,
    ) -> None:
        self.config = config
        self.store = store
        self.auth = auth
        self.hub = hub
        self.ws_factory = ws_factory
        self.metrics = metrics
        self.pages = Pages(client)
        self.write_limits = write_limits
        self.readiness = readiness
        #: Per client IP, for the routes anyone may call without a token
        #: (`public_read`).
        self.public_read_limits = public_read_limits
        self.active = ActiveUsers(store.users, hub.bus, clock)
        self.files = OperatorFiles(config.tracker_dir, config.app_dir)

    def resource(self):
        """Klein's resource, behind the UTF-8 check and the direct routes."""
        return Utf8Urls(
            self.app.resource(),
            direct={
                (b"POST", b"/auth/login"): self.render_login,
                (b"GET", b"/ws"): self.render_websocket,
            },
        )

    def render_login(self, request: IRequest) -> bytes | int:
        """``POST /auth/login`` without the router.

        Both steps of every login come here, so they skip Klein's per-request
        work (werkzeug's URL matching, four Deferreds and the error-handler
        chain): the route runs as one coroutine, and when nothing in it had
        to wait (limits, challenges and the user are in memory) it needs no
        Deferred (`first_step`) and its answer goes back at once with a
        ``Content-Length``.  Errors are mapped by the same handlers as
        Klein's routes.
        """
        return self._render_direct(request, self.login(request))

    def render_websocket(self, request: IRequest) -> bytes | int:
        """``GET /ws`` without the router, as the login steps: every
        connect of a reconnect storm comes here after its two logins.  The
        route's answer is the upgrade resource, rendered here as Klein
        would (a refusal it raises is mapped by the same handlers)."""
        return self._render_direct(request, self.websocket(request))

    def _render_direct(self, request: IRequest, route) -> bytes | int:
        """Run ``route`` (a route's coroutine) and answer with its bytes, or
        with what the resource it returned renders (``NOT_DONE_YET`` for a
        WebSocket upgrade: the protocol owns the connection then).  A route
        that never waits needs no Deferred (`first_step`)."""
        try:
            step = first_step(route)
            if not isinstance(step, Waiting):
                return _rendered(step, request)
        except Exception:
            return self._route_failed(Failure(), request)
        # Waiting on a shared limit or a database read: answer when it does.
        d = step.deferred
        d.addCallback(_rendered, request)
        d.addErrback(self._route_failed, request)
        done: list[bytes | int] = []
        d.addCallback(done.append)
        gone: list[bool] = []

        def lost(_) -> None:
            gone.append(True)
            d.cancel()

        def answer(_) -> None:
            if not gone and isinstance(done[0], bytes):
                request.setHeader(b"Content-Length", b"%d" % len(done[0]))
                request.write(done[0])
                request.finish()

        def failed(failure: Failure) -> None:
            if not gone and not failure.check(CancelledError):
                request.processingFailed(failure)

        request.notifyFinish().addErrback(lost)
        d.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    def _route_failed(self, failure: Failure, request: IRequest) -> bytes:
        """What Klein's error handlers would answer for ``failure``."""
        if failure.check(CancelledError):
            return failure
        if failure.check(ApiError):
            return self.api_error(request, failure)
        if failure.check(StoreUnavailable):
            return self.store_unavailable(request, failure)
        return self.unexpected_error(request, failure)

    # -- errors --------------------------------------------------------------

    @app.handle_errors(ApiError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, failure.value)

    @app.handle_errors(StoreUnavailable)
    def store_unavailable(self, request: IRequest, failure: Failure) -> bytes:
        """The database is down, restarting or cannot be written (disk full,
        read-only, locked): worth a retry, not a bug.  Logged as a warning
        only while the writer has not already announced the outage (once),
        so a full disk is not a warning per request."""
        if self.hub.writer.writable:
            self.log.warn(
                "{path}: {reason}", path=request.path, reason=failure.getErrorMessage()
            )
        else:
            self.log.debug(
                "{path}: {reason}", path=request.path, reason=failure.getErrorMessage()
            )
        request.setHeader(b"Retry-After", b"1")
        return error_response(
            request, ApiError(503, "Service temporarily unavailable; please retry")
        )

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        """Unknown paths (404) and wrong methods (405) from the router."""
        exc: HTTPException = failure.value
        code = exc.code or 500
        if 300 <= code < 400:
            # werkzeug "redirects" paths like /a//b; there is no such resource.
            code = 404
        error = ApiError(code, exc.name if code != 404 else "Not found")
        if code == 405:
            allowed = getattr(exc, "valid_methods", None) or ()
            error.allowed = [m.encode("ascii") for m in allowed]
        return error_response(request, error)

    @app.handle_errors(Exception)
    def unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        # The path only: /ws carries the token in the query string.
        self.log.failure("unexpected error on {path}", failure, path=request.path)
        return error_response(request, ApiError(500, "Internal server error"))

    # -- authentication --------------------------------------------------------

    @app.route("/auth/register", methods=["POST"])
    async def register(self, request: IRequest) -> bytes:
        ip = client_ip(request)
        await self.auth.check_rate(ip)
        body = read_json_object(request, "user_id", "username", "public_key")
        await self.auth.check_rate_user(body["user_id"])
        await self.auth.register(
            body["user_id"],
            body["username"],
            body["public_key"],
            body.get("invite"),
            ip,
        )
        return text_response(request, "User registered successfully", 201)

    @app.route("/auth/rotate-key", methods=["POST"])
    async def rotate_key(self, request: IRequest) -> bytes:
        ip = client_ip(request)
        await self.auth.check_rate(ip)
        body = read_json_object(request, "user_id", "public_key", "signature")
        await self.auth.check_rate_user(body["user_id"])
        token = await self.auth.rotate_key(
            body["user_id"], body["public_key"], body["signature"], ip
        )
        return json_response(request, {"token": token})

    @app.route("/auth/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        ip = client_ip(request)
        await self.auth.check_rate(ip)
        if request.args.get(b"verify", [b""])[0].lower() == b"true":
            body = read_json_object(request, "user_id", "signature")
            await self.auth.check_rate_user(body["user_id"])
            token = await self.auth.verify(body["user_id"], body["signature"], ip)
            return json_response(request, {"token": token})
        body = read_json_object(request, "user_id")
        await self.auth.check_rate_user(body["user_id"])
        challenge = await self.auth.challenge(body["user_id"])
        return json_response(request, {"challenge": challenge})

    async def public_read(self, request: IRequest) -> None:
        """Take a token from the client IP's public-read bucket (429 with
        ``Retry-After`` if it has none).  Refusals are counted, not logged:
        a loop being refused would log thousands of lines a second."""
        limits = self.public_read_limits
        ip = client_ip(request)
        if not await settled(limits.try_take(ip)):
            self.metrics.rate_limited_requests.labels(limit="public_read").inc()
            raise TooManyRequests(retry_after=limits.retry_after(ip))

    @app.route("/auth/users/<string:user_id>", methods=["GET"])
    async def get_user(self, request: IRequest, user_id: str) -> bytes:
        await self.public_read(request)
        user = await self.store.users.get(user_id)
        if user is None or user.status == DELETED:
            raise NotFound("User not found")
        return json_response(
            request,
            {
                "user_id": user.user_id,
                "username": user.username,
                "public_key": user.public_key,
            },
        )

    @app.route("/auth/check-userid/<string:user_id>", methods=["GET"])
    async def check_user_id(self, request: IRequest, user_id: str) -> bytes:
        await self.public_read(request)
        return json_response(
            request, {"exists": await self.store.users.exists(user_id)}
        )

    async def authenticated_user(self, request: IRequest) -> str:
        """The user named by the request's bearer token (401 otherwise)."""
        return await self.auth.authenticate(bearer_token(request))

    # -- WebSocket ---------------------------------------------------------------

    @app.route("/ws", methods=["GET"])
    async def websocket(self, request: IRequest) -> UpgradeResource:
        if self.hub.closing:
            raise ApiError(503, "Server is shutting down")
        token = request.args.get(b"token", [b""])[0].decode("latin-1")
        try:
            claims = await self.auth.authenticate_claims(token)
        except ApiError:
            self.metrics.refused_upgrades.labels(reason="token").inc()
            self.log.warn(
                "security event refused_upgrade (token) from {client_ip}",
                client_ip=client_ip(request),
                audit=True,
            )
            raise
        user_id = claims.user_id
        try:
            check_origin(request, self.config.allowed_origins)
        except ApiError:
            self.metrics.refused_upgrades.labels(reason="origin").inc()
            self.log.warn(
                "security event refused_upgrade (origin {origin!r}) for {user_id}",
                origin=(request.getHeader(b"origin") or b"").decode("latin-1"),
                user_id=user_id,
                audit=True,
            )
            raise
        ip = client_ip(request)
        reservation = await self.hub.reserve(
            ip,
            user_id,
            self.config.max_connections_per_ip,
            self.config.max_connections_per_user,
        )
        if reservation is None:
            self.metrics.refused_upgrades.labels(reason="limit").inc()
            self.log.warn(
                "security event refused_upgrade (connection limit) for {user_id}"
                " from {client_ip}",
                user_id=user_id,
                client_ip=ip,
                audit=True,
            )
            raise ApiError(429, "Too many connections")
        return UpgradeResource(self.ws_factory, user_id, reservation, claims.iat)

    # -- presence and profiles ----------------------------------------------------

    @app.route("/active-users", methods=["GET"])
    async def active_users(self, request: IRequest) -> bytes:
        await self.public_read(request)
        body = await self.active.body()
        request.setHeader(b"Content-Type", b"application/json")
        return body

    @app.route("/user/descriptions", methods=["POST"])
    async def set_descriptions(self, request: IRequest) -> bytes:
        user_id = await self.authenticated_user(request)
        body = read_json(request)
        if (
            not isinstance(body, list)
            or not body
            or not all(isinstance(item, str) for item in body)
        ):
            raise BadRequest("Body must be a non-empty JSON array of strings")
        await self.store.descriptions.set(user_id, body)
        return text_response(request, "Descriptions list updated")

    @app.route("/user/descriptions/<string:user_id>", methods=["GET"])
    async def get_descriptions(self, request: IRequest, user_id: str) -> bytes:
        await self.public_read(request)
        return json_response(request, await self.store.descriptions.get(user_id))

    # -- forward API ----------------------------------------------------------------

    @app.route("/direct-message/", methods=["POST"])
    async def direct_message(self, request: IRequest) -> bytes:
        user_id = await self.authenticated_user(request)
        body = read_json(request)
        if not isinstance(body, dict) or body.get("type") != "forward":
            raise BadRequest("Field 'type' must be 'forward'")
        query = body.get("query", body.get("message"))
        if not isinstance(query, str) or not query:
            raise BadRequest("A non-empty 'query' (or 'message') string is required")
        try:
            answer = await self.hub.ask_forward(user_id, query)
        except ForwardTimeout:
            raise ApiError(504, "No answer from your client in time")
        except NotConnected:
            raise ApiError(404, "Your client is not connected")
        return json_response(request, {"success": True, "answer": answer})

    @app.route("/register-document/", methods=["POST"])
    async def register_document(self, request: IRequest) -> bytes:
        user_id = await self.authenticated_user(request)
        reply = await documents.forward_document(
            self.hub, user_id, read_json(request), documents.REGISTER
        )
        return json_response(request, reply)

    @app.route("/append-document/", methods=["POST"])
    async def append_document(self, request: IRequest) -> bytes:
        user_id = await self.authenticated_user(request)
        reply = await documents.forward_document(
            self.hub, user_id, read_json(request), documents.APPEND
        )
        return json_response(request, reply)

    # -- analytics ------------------------------------------------------------------

    @app.route("/stats", methods=["GET"])
    async def stats(self, request: IRequest) -> bytes:
        await self.public_read(request)
        user_id = await self.authenticated_user(request)
        if user_id not in self.config.admin_users:
            raise ApiError(403, "Administrators only")
        # From the shared database: the same on every node of a cluster.
        stats = await self.store.analytics.stats(self.hub.time_ns())
        stats["node"] = self.config.node_id
        stats["live"] = {
            # this process's connections
            "connections": self.hub.bus.connection_count(),
            # the bus's view: the whole cluster's once it is the cluster bus
            "online_users": len(self.hub.bus.online_users()),
        }
        return json_response(request, stats)

    # -- health (unauthenticated, no rate limit: load balancer probes) ---------

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        """The process serves HTTP; says nothing about the database."""
        request.setHeader(b"Cache-Control", b"no-store")
        return json_response(request, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    async def readyz(self, request: IRequest) -> bytes:
        """200 when this node can take messages now, else 503 naming the
        failing parts (dkserver/health.py)."""
        request.setHeader(b"Cache-Control", b"no-store")
        verdict = await self.readiness.check()
        if not verdict.ready:
            request.setHeader(b"Retry-After", b"1")
            raise ApiError(503, f"not ready: {verdict.describe()}")
        return json_response(request, {"status": "ready"})

    @app.route("/metrics", methods=["GET"])
    async def metrics_text(self, request: IRequest) -> bytes:
        if not _is_loopback(client_ip(request)):
            user_id = await self.authenticated_user(request)
            if user_id not in self.config.admin_users:
                raise ApiError(403, "Administrators only")
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return self.metrics.render()

    @app.route("/openapi.json", methods=["GET"])
    def openapi_document(self, request: IRequest) -> bytes:
        """The REST API as OpenAPI 3.1; docs/protocol.md is its prose twin.

        Read from the package once, on first use (it is small and static).
        """
        from importlib import resources  # only this route reads package files here

        if getattr(self, "_openapi", None) is None:
            path = resources.files("dkserver.web").joinpath("pages", "openapi.json")
            self._openapi = path.read_bytes()
        request.setHeader(b"Content-Type", b"application/json")
        return self._openapi

    # -- pages and client downloads ---------------------------------------------

    @app.route("/", methods=["GET"])
    def landing(self, request: IRequest) -> bytes:
        return self.pages.render(request, "index.html", b"text/html; charset=utf-8")

    @app.route("/download", methods=["GET"])
    def download_page(self, request: IRequest) -> bytes:
        return self.pages.render(request, "download.html", b"text/html; charset=utf-8")

    @app.route("/install.sh", methods=["GET"])
    def install_script(self, request: IRequest) -> bytes:
        return self.pages.render(
            request, "install.sh", b"text/x-shellscript; charset=utf-8"
        )

    @app.route("/static/<string:name>", methods=["GET"])
    def static_file(self, request: IRequest, name: str) -> bytes:
        return self.pages.static(request, name)

    @app.route("/download/<string:platform>", methods=["GET"])
    async def download(self, request: IRequest, platform: str):
        return await self.pages.artifact(request, platform)

    # -- endpoints of the current original server: trackers, APIs, files ----------
    # (werkzeug's string converter matches no "/", so /download/app/<platform>
    # and /download/<platform> never shadow each other.)

    async def writing_user(self, request: IRequest) -> str:
        """The token's user, if their REST-write bucket has a token (429 if not)."""
        user_id = await self.authenticated_user(request)
        if not await settled(self.write_limits.try_take(user_id)):
            self.log.warn(
                "security event rate_limited (rest write) for user {user_id!r}",
                user_id=user_id,
                audit=True,
            )
            raise TooManyRequests()
        return user_id

    @app.route("/user/trackers", methods=["POST"])
    async def set_trackers(self, request: IRequest) -> bytes:
        user_id = await self.writing_user(request)
        new_list = trackers.parse_tracker_list(read_json(request))
        await self.store.trackers.replace(user_id, new_list)
        return text_response(request, "Tracker list updated successfully")

    @app.route("/user/trackers", methods=["GET"])
    async def get_trackers(self, request: IRequest) -> bytes:
        user_id = await self.authenticated_user(request)
        rows = await self.store.trackers.for_user(user_id)
        return json_response(request, [trackers.tracker_json(t) for t in rows])

    @app.route("/trackers", methods=["GET"])
    async def public_trackers(self, request: IRequest) -> bytes:
        await self.public_read(request)
        rows = await self.store.trackers.everyone()
        return json_response(request, [trackers.tracker_json(t) for t in rows])

    @app.route("/user/apis", methods=["POST"])
    async def save_api(self, request: IRequest) -> bytes:
        user_id = await self.writing_user(request)
        name, documents, policy = trackers.parse_api(read_json(request))
        try:
            await self.store.apis.upsert(
                user_id, name, documents, policy, trackers.MAX_APIS
            )
        except TooManyApis as e:
            raise ApiError(409, f"You already have {e.limit} APIs, the most allowed")
        return text_response(request, "API saved successfully")

    @app.route("/user/apis", methods=["GET"])
    async def get_apis(self, request: IRequest) -> bytes:
        user_id = await self.authenticated_user(request)
        rows = await self.store.apis.for_user(user_id)
        return json_response(request, [trackers.api_json(a) for a in rows])

    @app.route("/apis", methods=["GET"])
    async def public_apis(self, request: IRequest) -> bytes:
        await self.public_read(request)
        rows = await self.store.apis.everyone()
        return json_response(request, [trackers.api_json(a) for a in rows])

    @app.route("/tracker-apps", methods=["GET"])
    def tracker_apps(self, request: IRequest):
        return self.files.tracker_list(request)

    @app.route("/tracker-folder/<string:name>", methods=["GET"])
    def tracker_folder(self, request: IRequest, name: str):
        return self.files.tracker_package(request, name)

    @app.route("/download/app/<string:platform>", methods=["GET"])
    def download_app(self, request: IRequest, platform: str):
        return self.files.app(request, platform)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rendered(result: Any, request: IRequest) -> bytes | int:
    """A route's bytes, or what the resource it returned renders."""
    if isinstance(result, bytes):
        return result
    return result.render(request)
