"""The WebSocket factory, with every limit set explicitly from configuration."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory

from dkserver.auth.revocation import Revocations
from dkserver.config import Config
from dkserver.ws.hub import Hub
from dkserver.ws.outbox import (
    DEFAULT_LIMIT,
    PROOF_BURST,
    PROOF_INTERVAL,
    ProofBudget,
)
from dkserver.ws.protocol import DkServerProtocol


class DkWebSocketFactory(WebSocketServerFactory):
    protocol = DkServerProtocol

    def __init__(
        self,
        config: Config,
        hub: Hub,
        reactor: Any,
        revocations: Revocations | None = None,
    ) -> None:
        super().__init__(url=None, server="dkserver", reactor=reactor)
        self.hub = hub
        #: Checked once more when a connection opens (dkserver.auth.revocation).
        self.revocations = revocations if revocations is not None else Revocations()
        hub.factory = self
        self.queue_limit = DEFAULT_LIMIT
        self.inbox_limit = 256
        #: The proof-ping token bucket of each connection, and the extra
        #: proofs the server spends while it has CPU to spare (outbox.py).
        self.proof_burst = PROOF_BURST
        self.proof_interval = PROOF_INTERVAL
        self.proof_budget = ProofBudget(hub.clock)
        self.setProtocolOptions(**websocket_options(config))
        # Autobahn copies every option from the factory onto each protocol
        # instance unless the protocol already has it; a per-factory subclass
        # holding them as class attributes saves ~40 dict entries (~1.5 KiB)
        # per connection, and keeps factories with other options independent.
        self.protocol = type(
            "DkServerProtocol",
            (DkServerProtocol,),
            {
                attr: _as_class_attribute(getattr(self, attr))
                for attr in DkServerProtocol.CONFIG_ATTRS
            },
        )


def _as_class_attribute(value: Any) -> Any:
    # A function stored on a class would become a method (e.g. the
    # perMessageCompressionAccept callback would receive the protocol as an
    # extra first argument).
    return staticmethod(value) if callable(value) else value


def websocket_options(config: Config) -> dict[str, Any]:
    """Autobahn options; conformance tests build their echo server from these."""
    return {
        "maxFramePayloadSize": config.max_ws_message,
        "maxMessagePayloadSize": config.max_ws_message,
        "autoFragmentSize": 0,
        # Ping every 54 s; a peer silent for 60 s (no frame, no pong) is dropped.
        "autoPingInterval": config.ws_ping_interval,
        "autoPingTimeout": max(1.0, config.ws_ping_timeout - config.ws_ping_interval),
        "autoPingRestartOnAnyTraffic": True,
        "openHandshakeTimeout": 10.0,
        "closeHandshakeTimeout": 5.0,
        # The Origin allowlist is enforced before the upgrade (ws.upgrade), with
        # a JSON 403; Autobahn is told to accept what reaches it.
        "allowedOrigins": ["*"],
        "webStatus": False,
        "trustXForwardedFor": 0,
        "utf8validateIncoming": True,
        "failByDrop": False,
        "echoCloseCodeReason": False,
        "perMessageCompressionAccept": lambda offers: None,
        "requireMaskedClientFrames": True,
        "maskServerFrames": False,
        "tcpNoDelay": True,
    }
