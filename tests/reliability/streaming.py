"""Clients for the reliability tests: senders that stream unique signed
messages, and RFC 6455-strict receivers."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

from autobahn.websocket.protocol import Disconnected, WebSocketProtocol
from twisted.internet.defer import Deferred

from tests.reliability.daemon import DaemonHandle
from tests.support.client import Identity, register_and_login
from tests.support.waiting import sleep
from tests.support.ws import WsClient, _Factory, _tls, _with_timeout, signed_frame


class Receiver(WsClient):
    """Keeps data frames that arrived after the server's close frame apart."""

    def __init__(self, user_id: str | None = None) -> None:
        super().__init__(user_id)
        self.after_close: list[dict] = []

    def _on_frame(self, payload: bytes, is_binary: bool) -> None:
        if self.protocol.state != WebSocketProtocol.STATE_OPEN:
            # We already got (and answered) a close frame: RFC 6455 §5.5.1
            # says none may follow, and a strict client drops them.
            self.after_close.append(_parse(payload))
            return
        super()._on_frame(payload, is_binary)


def _parse(payload: bytes):
    try:
        return json.loads(payload)
    except ValueError:
        return payload


async def open_ws(server: DaemonHandle, token: str, cls=WsClient) -> WsClient:
    """tests.support.ws.connect, but with a chosen client class."""
    client = cls(None)
    url = f"wss://localhost:{server.https_port}/ws?token={quote(token, safe='')}"
    factory = _Factory(url)
    factory.client = client
    factory.setProtocolOptions(
        maxFramePayloadSize=4 * 2**20,
        maxMessagePayloadSize=4 * 2**20,
        openHandshakeTimeout=5,
        closeHandshakeTimeout=2,
        autoPingInterval=0,
    )
    await _tls(server).connect(factory)
    return await _with_timeout(client._open_d, 6, "WebSocket open")


async def open_clients(
    server: DaemonHandle, senders: list[Identity], receivers: list[Identity]
) -> tuple[dict[str, str], dict[str, Receiver], dict[str, WsClient]]:
    """Register and log everyone in, then connect the receivers and the
    senders: (tokens, receivers' clients, senders' clients) by user id."""
    tokens = {}
    for ident in senders + receivers:
        tokens[ident.user_id] = await register_and_login(server, ident)
    rx = {
        r.user_id: await open_ws(server, tokens[r.user_id], Receiver) for r in receivers
    }
    tx = {s.user_id: await open_ws(server, tokens[s.user_id]) for s in senders}
    return tokens, rx, tx


@dataclass
class Traffic:
    """What the senders handed to their sockets, and what receivers got."""

    #: content -> (from, to), for every frame a sender's socket accepted.
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: receiver user id -> every message frame it got (all connections).
    received: dict[str, list[dict]] = field(default_factory=dict)
    #: receiver user id -> data frames that arrived after a close frame.
    after_close: dict[str, list[dict]] = field(default_factory=dict)
    #: system frames the senders got.
    sender_errors: list[dict] = field(default_factory=list)

    def take(self, user_id: str, client: Receiver) -> None:
        self.received.setdefault(user_id, []).extend(client.received)
        self.after_close.setdefault(user_id, []).extend(client.after_close)


class Streamer:
    """One sender pushing unique signed messages round-robin to receivers."""

    def __init__(
        self,
        ident: Identity,
        client: WsClient,
        receivers: list[str],
        traffic: Traffic,
        sizes: tuple[int, int],
        per_tick: int,
        tick: float,
    ) -> None:
        self.ident = ident
        self.client = client
        self.receivers = receivers
        self.traffic = traffic
        self.sizes = sizes
        self.per_tick = per_tick
        self.tick = tick
        self.running = True
        self.seq = 0
        self.done = Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        rng = random.Random(self.ident.user_id)
        while self.running and not self.client.closed:
            for _ in range(self.per_tick):
                to = self.receivers[self.seq % len(self.receivers)]
                head = f"{self.ident.user_id}-{self.seq}|"
                content = head + "x" * max(0, rng.randint(*self.sizes) - len(head))
                try:
                    self.client.send_json(signed_frame(self.ident, to, content))
                except Disconnected:
                    return
                self.traffic.sent[content] = (self.ident.user_id, to)
                self.seq += 1
            await sleep(self.tick)

    async def stop(self) -> None:
        self.running = False
        await self.done


# -- after an outage: nothing acknowledged lost --------------------------------

#: The system frame a sender gets for a message the server could not store.
RESEND = "Internal error: message not stored; please resend"


def refusals(client) -> int:
    """How many "please resend" frames ``client`` got."""
    return sum(1 for f in client.received if f.get("content") == RESEND)


def other_system_frames(client) -> list[dict]:
    return [
        f
        for f in client.received
        if f.get("from") == "system" and f.get("content") != RESEND
    ]


def outage_settled(rows_now, traffic: Traffic, tx: dict, rx: dict):
    """A predicate for after an outage: every frame answered (stored or
    refused), every stored row received and marked delivered.  ``rows_now()``
    reads the rows (id -> (from, to, content, status, ...))."""

    def settled() -> bool:
        rows = rows_now()
        stored = Counter(row[0] for row in rows.values())
        sent = Counter(frm for frm, _ in traffic.sent.values())
        answered = all(stored[u] + refusals(tx[u]) >= sent[u] for u in sent)
        got = {(u, f["id"]) for u, c in rx.items() for f in c.received}
        return answered and all(
            (row[1], mid) in got and row[3] == "delivered" for mid, row in rows.items()
        )

    return settled


def check_nothing_lost(
    rows: dict, traffic: Traffic, tx: dict, rx: dict, log: str | None = None
) -> None:
    """The outage's accounting: each stored row sent once, by and to whom it
    names; per sender stored + refused == sent (more only when ``log`` has
    a commit whose outcome was unknown); every row received once, as stored,
    and marked delivered."""
    contents = Counter(row[2] for row in rows.values())
    assert not [c for c, n in contents.items() if n > 1], "content stored twice"
    for mid, (frm, to, content, *_) in rows.items():
        assert traffic.sent.get(content) == (frm, to), f"row {mid} never sent"
    for user_id, client in tx.items():
        assert other_system_frames(client) == [], other_system_frames(client)
        sent = sum(1 for frm, _ in traffic.sent.values() if frm == user_id)
        stored = sum(1 for row in rows.values() if row[0] == user_id)
        refused = refusals(client)
        assert refused, f"{user_id} was never told to resend"
        assert stored + refused >= sent, (
            f"{user_id}: {sent - stored - refused} acknowledged messages lost "
            f"(sent {sent}, stored {stored}, refused {refused})"
        )
        in_doubt = log is not None and "outcome unknown" in log
        assert stored + refused == sent or in_doubt, (
            f"{user_id}: sent {sent}, stored {stored}, refused {refused}"
        )
    for user_id, client in rx.items():
        counts = Counter(f["id"] for f in client.received)
        assert not [m for m, n in counts.items() if n > 1], "duplicates"
        for f in client.received:
            frm, to, content, *_ = rows[f["id"]]
            assert (f["from"], f["to"], f["content"]) == (frm, to, content)
        missing = [
            m for m, row in rows.items() if row[1] == user_id and m not in counts
        ]
        assert not missing, f"{user_id} never got {len(missing)} stored messages"
    pending = [m for m, row in rows.items() if row[3] != "delivered"]
    assert not pending, f"{len(pending)} delivered rows not marked delivered"
