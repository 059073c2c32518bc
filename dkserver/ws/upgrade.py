"""Hand an authenticated HTTP request over to the WebSocket protocol.

Like Autobahn's ``WebSocketResource``, but the caller has already checked the
token, the user and the Origin (so a refusal is a JSON 401/403 and nothing is
upgraded), and the protocol learns which user it serves before the handshake.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.protocols.policies import ProtocolWrapper
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from dkserver.web.responses import ApiError


def check_origin(request: IRequest, allowed: tuple[str, ...]) -> None:
    """Browsers send Origin; native clients do not and are unaffected.

    Allowed: the configured origins, or (when none are configured) the
    server's own https origin as named by the Host header.
    """
    origin = request.getHeader(b"origin")
    if origin is None:
        return
    origin_text = origin.decode("latin-1").rstrip("/").lower()
    if allowed:
        if "*" in allowed or origin_text in {a.rstrip("/").lower() for a in allowed}:
            return
    else:
        host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
        parts = urlsplit(origin_text)
        if parts.scheme == "https" and parts.netloc and parts.netloc == host:
            return
    raise ApiError(403, "Origin not allowed")


def upgrade(
    request: IRequest,
    factory,
    user_id: str,
    reservation: Any = None,
    token_iat: float | None = None,
) -> int | bytes:
    """Take over the request's transport for a WebSocket session of ``user_id``.

    ``reservation`` (connection-limit counts) is released by the protocol when
    the connection ends, or here if the upgrade does not happen.
    """
    channel = request.channel
    transport = channel.transport
    upgrade_header = (request.getHeader(b"upgrade") or b"").lower()
    refusal = None
    if factory.hub.closing:
        # Authenticated before shutdown began; too late to open a session.
        refusal = ApiError(503, "Server is shutting down")
    elif transport is None or upgrade_header != b"websocket":
        refusal = ApiError(426, "WebSocket upgrade required")
    if refusal is not None:
        if reservation is not None:
            factory.hub.release(reservation)
        raise refusal
    protocol = factory.buildProtocol(transport.getPeer())
    protocol.user_id = user_id
    protocol.token_iat = token_iat
    protocol.reservation = reservation
    in_flight = getattr(getattr(channel, "site", None), "in_flight", None)
    if in_flight is not None:
        in_flight.discard(request)
    channel.transport = None
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    # twisted.web paused the transport while the request was processed.
    producer = getattr(transport, "_networkProducer", None)
    if producer is not None:
        producer.resumeProducing()
    else:
        transport.resumeProducing()
    data = request.method + b" " + request.uri + b" HTTP/1.1\r\n"
    for name, values in request.requestHeaders.getAllRawHeaders():
        data += name + b": " + b",".join(values) + b"\r\n"
    data += b"\r\n"
    protocol.dataReceived(data)
    return NOT_DONE_YET


class UpgradeResource(Resource):
    """What the /ws route returns once the request is authorized."""

    isLeaf = True

    def __init__(
        self,
        factory,
        user_id: str,
        reservation: Any = None,
        token_iat: float | None = None,
    ) -> None:
        super().__init__()
        self._factory = factory
        self._user_id = user_id
        self._reservation = reservation
        self._token_iat = token_iat

    def render(self, request: IRequest) -> int | bytes:
        return upgrade(
            request, self._factory, self._user_id, self._reservation, self._token_iat
        )
