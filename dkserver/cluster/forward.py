"""The forward API across nodes: a request that arrives at node A for a
user connected only to node B is asked on B and answered back to A.

Each node subscribes ``dk:node:<node_id>``.  A publishes
``{"op": "ask", "corr", "reply_to", "user", "content"}`` there; B asks its
own connections through its ForwardBroker (so a user's requests stay
serialized on the node that holds the connections, and B's timeout applies)
and publishes ``{"op": "answer", "corr", "content"}`` or ``{"op": "answer",
"corr", "error": "timeout" | "not_connected"}`` to ``dk:node:<A>``.

A's own timer is the forward timeout plus FORWARD_MARGIN (B answers
"timeout" first when it is alive).  A fails fast, with NotConnected, when
nobody subscribes B's channel (``PUBLISH`` reaches 0 clients: B is gone),
when Redis cannot take the request, or when B is declared dead while the
request waits (within the node expiry bound, not after the timeout).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dkserver.cluster.nodes import NodeRegistry
from dkserver.cluster.redis import RedisService, channel
from dkserver.ws.forward import ForwardTimeout, NotConnected

NODE_PREFIX = b"dk:node:"
#: A's timer runs this much longer than B's, so B's own answer comes first.
FORWARD_MARGIN = 2.0


def node_channel(node_id: str) -> bytes:
    return channel(NODE_PREFIX, node_id)


class _Ask:
    __slots__ = ("answer", "node", "timer")

    def __init__(self, node: str, timer: Any) -> None:
        self.answer: Deferred = Deferred()
        self.node = node
        self.timer = timer


class NodeForwards:
    log = Logger()

    def __init__(
        self,
        node_id: str,
        redis: RedisService,
        nodes: NodeRegistry,
        clock: Any,
        timeout: float,
    ) -> None:
        self.node_id = node_id
        self.redis = redis
        self.nodes = nodes
        self.clock = clock
        self.timeout = timeout
        #: ``serve(user_id, content)``: ask our own connections; the answer's
        #: content (Hub.answer_for_node).
        self.serve: Callable[[str, str], Awaitable[str]] | None = None
        self._asks: dict[str, _Ask] = {}
        self.channel = node_channel(node_id)
        redis.subscribe(self.channel)
        nodes.on_node_died(self._node_died)

    # -- asking another node ----------------------------------------------------

    def ask(self, user_id: str, content: str) -> Deferred | None:
        """None when no other node has the user online; else the answer."""
        targets = self.nodes.nodes_of(user_id)
        if not targets:
            return None
        return Deferred.fromCoroutine(self._ask_nodes(targets, user_id, content))

    async def _ask_nodes(self, targets: list[str], user_id: str, content: str) -> str:
        deadline = self.clock.seconds() + self.timeout
        for node in targets:
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                break
            try:
                return await self._ask_node(node, user_id, content, remaining)
            except NotConnected:
                continue  # the user left that node, or it is gone: next one
        raise NotConnected()

    def _ask_node(self, node: str, user_id: str, content: str, wait: float) -> Deferred:
        corr = uuid.uuid4().hex
        timer = self.clock.callLater(
            wait + FORWARD_MARGIN, self._finish, corr, ForwardTimeout()
        )
        ask = self._asks[corr] = _Ask(node, timer)
        data = orjson.dumps(
            {
                "op": "ask",
                "corr": corr,
                "reply_to": self.node_id,
                "user": user_id,
                "content": content,
            }
        )
        d = self.redis.execute("PUBLISH", node_channel(node), data)
        d.addCallbacks(
            lambda receivers: (
                receivers or self._finish(corr, NotConnected())
            ),  # nobody listens: B is gone
            lambda _: self._finish(corr, NotConnected()),
        )
        return ask.answer

    def _finish(self, corr: str, outcome: Any) -> None:
        ask = self._asks.pop(corr, None)
        if ask is None:
            return
        if ask.timer.active():
            ask.timer.cancel()
        if isinstance(outcome, Exception):
            ask.answer.errback(outcome)
        else:
            ask.answer.callback(outcome)

    def _node_died(self, node: str) -> None:
        for corr, ask in list(self._asks.items()):
            if ask.node == node:
                self._finish(corr, NotConnected())

    # -- messages on our channel ------------------------------------------------

    def message(self, data: bytes) -> None:
        try:
            msg = orjson.loads(data)
            op, corr = msg["op"], msg["corr"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.log.warn("malformed node message ignored")
            return
        if op == "answer":
            error = msg.get("error")
            if error == "timeout":
                self._finish(corr, ForwardTimeout())
            elif error:
                self._finish(corr, NotConnected())
            else:
                self._finish(corr, str(msg.get("content", "")))
        elif op == "ask" and self.serve is not None:
            d = Deferred.fromCoroutine(self._serve(msg))
            d.addErrback(lambda f: self.log.failure("serving a forward request", f))

    async def _serve(self, msg: dict) -> None:
        reply: dict[str, Any] = {"op": "answer", "corr": msg["corr"]}
        try:
            reply["content"] = await self.serve(msg["user"], msg["content"])
        except ForwardTimeout:
            reply["error"] = "timeout"
        except NotConnected:
            reply["error"] = "not_connected"
        await self.redis.execute(
            "PUBLISH", node_channel(str(msg["reply_to"])), orjson.dumps(reply)
        )
