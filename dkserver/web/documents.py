"""POST /register-document/ and /append-document/: a forward request that the
token owner's own agent answers (PROTOCOL.md).

The server stores nothing: the document travels to the owner's connection in
the forward frame, and the agent's ``register_document_success`` or
``register_document_error`` answer becomes the HTTP reply.  The request goes
through the same :class:`~dkserver.ws.forward.ForwardBroker` as
``/direct-message/``, so it reaches a connection that answers and concurrent
requests never get each other's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from dkserver.web.responses import ApiError, BadRequest
from dkserver.ws.forward import ForwardTimeout, NotConnected
from dkserver.ws.hub import Hub

REGISTER = "register_document"
APPEND = "append_document"
SUCCESS = "register_document_success"


@dataclass(frozen=True)
class DocumentRequest:
    kind: str
    filename: str
    content: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class DocumentAnswer:
    type: str
    message: str

    def reply(self) -> dict[str, Any]:
        return {
            "success": self.type == SUCCESS,
            "message": self.message,
            "type": self.type,
        }


def parse_request(body: Any, kind: str) -> DocumentRequest:
    """The request body, validated (400 for anything a client got wrong)."""
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    fields = {}
    for name in ("filename", "content"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            raise BadRequest(f"Field {name!r} must be a non-blank string")
        fields[name] = value
    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str) for v in metadata.values()
    ):
        raise BadRequest("Field 'metadata' must be an object of string values")
    return DocumentRequest(kind, fields["filename"], fields["content"], metadata)


def request_content(request: DocumentRequest) -> str:
    """The forward frame's content: the document as inner JSON text.

    The outer ``filename`` and ``content`` stay empty, as the original sends
    them: the ``dk`` agent treats a filled outer pair as a register.
    """
    inner = orjson.dumps(
        {
            "type": request.kind,
            "filename": request.filename,
            "content": request.content,
            "metadata": request.metadata,
        }
    ).decode()
    return orjson.dumps(
        {"type": "forward", "message": inner, "filename": "", "content": ""}
    ).decode()


def parse_answer(content: str) -> DocumentAnswer:
    """The agent's answer; anything it sends answers the request.

    The inner JSON's ``type`` decides success; an answer without a readable
    inner type (an agent that does not know documents) is a failure whose
    message is the text it sent.
    """
    try:
        outer = orjson.loads(content)
    except orjson.JSONDecodeError:
        return DocumentAnswer("", content)
    if not isinstance(outer, dict):
        return DocumentAnswer("", content)
    inner_text = outer.get("message")
    candidates = [outer]
    if isinstance(inner_text, str):
        try:
            candidates.insert(0, orjson.loads(inner_text))
        except orjson.JSONDecodeError:
            pass
    for candidate in candidates:
        if isinstance(candidate, dict) and str(candidate.get("type", "")).startswith(
            "register_document_"
        ):
            message = candidate.get("message", "")
            return DocumentAnswer(
                candidate["type"],
                message if isinstance(message, str) else orjson.dumps(message).decode(),
            )
    return DocumentAnswer("", inner_text if isinstance(inner_text, str) else content)


async def forward_document(hub: Hub, user_id: str, body: Any, kind: str) -> dict:
    """Validate, ask the owner's agent, and return the HTTP reply body."""
    request = parse_request(body, kind)
    try:
        answer = await hub.forward_request(
            user_id, request_content(request), parse_answer
        )
    except ForwardTimeout:
        raise ApiError(504, "No answer from your client in time")
    except NotConnected:
        raise ApiError(404, "Your client is not connected")
    return answer.reply()
