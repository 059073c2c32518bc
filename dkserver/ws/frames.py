"""The message object of PROTOCOL.md: parsing client frames, encoding server
frames.

Parsing is strict about types and lenient about unknown fields (existing
clients send ``id``/``status`` back, which the server ignores).  Every
rejection is a :class:`FrameError` whose text becomes a system error frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from dkserver import timestamps

RATE_LIMITED = "Rate limit exceeded. Please slow down."
BROADCAST = "broadcast"
SYSTEM = "system"


class FrameError(ValueError):
    """A client frame that is not relayed; the text goes back to the client."""

    def __init__(self, text: str, *, spoofed: bool = False) -> None:
        super().__init__(text)
        self.spoofed = spoofed


# Not frozen: a frozen dataclass sets each field through object.__setattr__,
# ~4x the cost of a plain one, and one is built per message.  Nothing
# changes a message after parsing.
@dataclass(slots=True)
class ClientMessage:
    to: str
    content: str
    timestamp: timestamps.Timestamp
    signature: str
    is_forward_message: bool

    @property
    def is_broadcast(self) -> bool:
        return self.to == BROADCAST


def parse_client_frame(payload: bytes, user_id: str, now_ns: int) -> ClientMessage:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise FrameError("Invalid message format: not valid JSON")
    if not isinstance(obj, dict):
        raise FrameError("Invalid message format: expected a JSON object")
    sender = obj.get("from")
    if sender not in (None, "", user_id):
        raise FrameError("Sender does not match the authenticated user", spoofed=True)
    to = obj.get("to")
    if not isinstance(to, str) or not to:
        raise FrameError("Invalid message format: 'to' must be a non-empty string")
    content = obj.get("content")
    if not isinstance(content, str):
        raise FrameError("Invalid message format: 'content' must be a string")
    raw_ts = obj.get("timestamp")
    if raw_ts in (None, "", timestamps.ZERO_TIME):
        ts = timestamps.now(now_ns)
    else:
        try:
            ts = timestamps.parse(raw_ts)
        except timestamps.TimestampError as e:
            raise FrameError(f"Invalid message format: {e}")
    signature = obj.get("signature") or ""
    if not isinstance(signature, str):
        raise FrameError("Invalid message format: 'signature' must be a string")
    forward = obj.get("is_forward_message", False)
    broadcast = obj.get("is_broadcast", False)
    if not isinstance(forward, bool) or not isinstance(broadcast, bool):
        raise FrameError("Invalid message format: flags must be booleans")
    # is_broadcast is type-checked but not trusted: `to` decides.
    return ClientMessage(to, content, ts, signature, forward)


def encode_message(
    message_id: int,
    from_user: str,
    to_user: str,
    timestamp: str,
    content: str,
    status: str,
    is_broadcast: bool = False,
    signature: str = "",
    is_forward_message: bool = False,
) -> bytes:
    """A server frame, fields in the order the original server writes them."""
    obj: dict[str, Any] = {
        "id": message_id,
        "from": from_user,
        "to": to_user,
        "timestamp": timestamp,
        "content": content,
        "status": status,
    }
    if is_broadcast:
        obj["is_broadcast"] = True
    if signature:
        obj["signature"] = signature
    if is_forward_message:
        obj["is_forward_message"] = True
    return orjson.dumps(obj)


def system_frame(user_id: str, text: str) -> bytes:
    return encode_message(0, SYSTEM, user_id, timestamps.ZERO_TIME, text, "error")


def forward_answer_text(content: str) -> str | None:
    """The answer in a forward response's two-level JSON content.

    Clients answer with ``{"type": ..., "message": X}`` where X is the JSON
    text of ``{"type": ..., "message": "<answer>"}``; a client that puts the
    answer text directly in the outer ``message`` is understood too.
    """
    try:
        outer = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content
    if not isinstance(outer, dict):
        return content
    inner = outer.get("message", outer.get("answer"))
    if not isinstance(inner, str):
        return None if inner is None else orjson.dumps(inner).decode()
    try:
        nested = orjson.loads(inner)
    except orjson.JSONDecodeError:
        return inner
    if isinstance(nested, dict):
        value = nested.get("message", nested.get("answer"))
        if isinstance(value, str):
            return value
    return inner


def is_forward_response(message: ClientMessage) -> bool:
    if message.is_forward_message:
        return True
    if '"forward_response"' not in message.content:
        return False
    try:
        obj = orjson.loads(message.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("type") == "forward_response"


def forward_request_content(query: str) -> str:
    inner = orjson.dumps({"type": "forward", "message": query}).decode()
    return orjson.dumps({"type": "forward", "message": inner}).decode()
