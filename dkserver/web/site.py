"""The HTTPS site: security headers, no tracebacks, bounded request bodies.

twisted.web buffers whole request bodies and has no size cap of its own, and
its idle timeout is reset by every byte, so a client trickling a request would
hold a connection forever.  :class:`DkRequest` refuses bodies over the limit
before reading them (413) and gives each request a deadline to arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import unquote_to_bytes

from klein.resource import KleinResource
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource, Resource

from dkserver.web.deadlines import ArrivalDeadlines
from dkserver.web.headers import HttpDate, canonical, set_headers
from dkserver.web.responses import error_body

SECURITY_HEADERS = (
    (b"Strict-Transport-Security", b"max-age=63072000"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Frame-Options", b"DENY"),
)


_SECURITY_HEADERS = canonical(SECURITY_HEADERS)
((_SERVER, _), (_DATE, _)) = canonical(((b"Server", b""), (b"Date", b"")))
_date = HttpDate()

#: Seconds a refused request's connection may linger to deliver the answer.
REFUSED_LINGER = 1.0


class DkRequest(server.Request):
    """A request with a body cap, an arrival deadline and security headers."""

    log = Logger()
    _refused = False
    #: The site's arrival deadlines, while this request is arriving.
    _deadlines: ArrivalDeadlines | None = None
    _received = 0
    #: The site's set of requests being processed, while this one is.
    _in_flight: set | None = None

    def __init__(self, channel: http.HTTPChannel, *args, **kwargs) -> None:
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        self._max_body: int = getattr(site, "max_body", 1024 * 1024)
        deadlines = getattr(site, "deadlines", None)
        if deadlines is not None:
            self._deadlines = deadlines
            deadlines.start(self)

    def too_slow(self) -> None:
        """The request did not arrive by its deadline (`ArrivalDeadlines`)."""
        self._deadlines = None
        self.log.info(
            "request from {peer} too slow; closing", peer=self.getClientAddress()
        )
        self._refuse(408, b"Request Timeout", "Request took too long to arrive")

    def _cancel_deadline(self) -> None:
        if self._deadlines is not None:
            self._deadlines.arrived(self)
            self._deadlines = None

    def _refuse(self, code: int, phrase: bytes, message: str) -> None:
        """Answer before the body is read, then close: the rest is never parsed."""
        self._refused = True
        self._cancel_deadline()
        transport = self.channel.transport
        if transport is None:
            return
        body = error_body(message)
        head = [b"HTTP/1.1 %d %s" % (code, phrase)]
        head.append(b"Content-Type: application/json")
        head.append(b"Content-Length: %d" % len(body))
        head.append(b"Connection: close")
        head.extend(k + b": " + v for k, v in SECURITY_HEADERS)
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        transport.pauseProducing()
        self.channel.loseConnection()
        # The TLS close waits for the peer's close_notify, which is never read
        # now that reading is paused: give the response a moment, then abort.
        self.channel.callLater(REFUSED_LINGER, transport.abortConnection)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._max_body:
            self._refuse(413, b"Payload Too Large", "Request body too large")
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._max_body:
            self._refuse(413, b"Payload Too Large", "Request body too large")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._cancel_deadline()
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def process(self) -> None:
        set_headers(self.responseHeaders, _SECURITY_HEADERS)
        site = self.channel.site
        in_flight = getattr(site, "in_flight", None)
        if in_flight is not None:
            # Left in finish() or connectionLost(): no Deferred per request.
            self._in_flight = in_flight
            in_flight.add(self)
        direct = getattr(site, "direct", None)
        route = direct.get((self.method, self.path)) if direct else None
        if route is None:
            super().process()
        else:
            self._process_direct(site, route)

    def _process_direct(self, site: server.Site, route: Callable) -> None:
        """What ``server.Request.process`` and ``render`` do, for a route
        that renders the request itself (`Utf8Urls.direct`): no resource
        traversal, no encoder lookup, ``Date`` formatted once a second."""
        self.site = site
        set_headers(self.responseHeaders, ((_SERVER, server.version), (_DATE, _date())))
        self.prepath = []
        self.sitepath = []
        self.postpath = self.path[1:].split(b"/")
        try:
            if utf8_host(self):
                body = route(self)
            else:
                body = _not_utf8(self)
            if body is server.NOT_DONE_YET:
                return
            self.setHeader(b"Content-Length", b"%d" % len(body))
            self.write(body)
            self.finish()
        except BaseException:
            self.processingFailed(Failure())

    def _untrack(self) -> None:
        if self._in_flight is not None:
            self._in_flight.discard(self)
            self._in_flight = None

    def finish(self) -> None:
        super().finish()
        self._untrack()

    def processingFailed(self, reason):
        """Log the failure; the client gets a generic JSON 500, no traceback."""
        # The path only: /ws carries the token in the query string.
        self.log.failure("unhandled error rendering {path}", reason, path=self.path)
        if self.finished or self._disconnected:
            return None
        body = error_body("Internal server error")
        self.setResponseCode(http.INTERNAL_SERVER_ERROR)
        self.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        self.write(body)
        self.finish()
        return reason

    def connectionLost(self, reason) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)
        self._untrack()


def utf8_host(request) -> bool:
    """Whether the request's host name is UTF-8."""
    host = request.getHeader(b"host")
    # ASCII is UTF-8, and so is the address used without a Host.
    if host is None or host.isascii():
        return True
    try:
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _not_utf8(request) -> bytes:
    request.setResponseCode(400)
    request.setHeader(b"Content-Type", b"application/json")
    return error_body("The URL path and Host must be UTF-8")


class Utf8Urls(Resource):
    """Refuse a URL path or Host that is not UTF-8 with the JSON error.

    Klein answers those itself, with a text body (and logs a traceback), before
    any of the app's error handlers run.

    ``direct`` maps ``(method, exact path)`` to a render function that
    answers without the router (the login steps and ``GET /ws``, see
    :meth:`dkserver.web.app.DkApp.render_login`); `DkSite` hands those to
    `DkRequest._process_direct` before any traversal, so they never reach
    this resource.
    """

    isLeaf = True

    def __init__(
        self,
        wrapped: IResource,
        direct: Mapping[tuple[bytes, bytes], Callable] | None = None,
    ) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.direct = dict(direct or {})

    def render(self, request):
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return _not_utf8(request)
        if not utf8_host(request):
            return _not_utf8(request)
        return self.wrapped.render(request)


class DkSite(server.Site):
    """The HTTPS site; tracebacks are never shown to clients."""

    displayTracebacks = False
    requestFactory = DkRequest

    def __init__(
        self,
        resource: IResource,
        *,
        max_body: int,
        idle_timeout: float,
        request_deadline: float,
        reactor=None,
    ) -> None:
        if isinstance(resource, KleinResource):
            resource = Utf8Urls(resource)
        # No form parsing: the API takes JSON, and twisted.web's form support
        # parses every POST's Content-Type with the email package (~15 % of a
        # login's CPU) and would buffer multipart bodies.
        super().__init__(
            resource,
            timeout=idle_timeout,
            reactor=reactor,
            parsePOSTFormSubmission=False,
        )
        #: ``(method, path)`` -> a route answering without traversal
        #: (`DkRequest._process_direct`).
        self.direct = getattr(resource, "direct", None)
        self.max_body = max_body
        #: Requests still arriving, on one timer (None: no deadline).
        self.deadlines = (
            ArrivalDeadlines(self.reactor, request_deadline)
            if request_deadline
            else None
        )
        #: Requests being processed, so shutdown can let them finish.
        self.in_flight: set[DkRequest] = set()

    def stopFactory(self) -> None:
        super().stopFactory()
        if self.deadlines is not None:
            self.deadlines.idle()

    async def drain(self, clock, grace: float) -> int:
        """Wait up to ``grace`` seconds for in-flight requests; return leftovers."""
        waited = 0.0
        while self.in_flight and waited < grace:
            await deferLater(clock, 0.05)
            waited += 0.05
        return len(self.in_flight)

    def log(self, request) -> None:
        """No access line per request.

        They were debug events, but twistd's log observer writes every level:
        formatting and writing two lines per login was ~5 % of its CPU.
        Failures, refusals and security events are logged where they happen.
        """
