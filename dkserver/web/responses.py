"""JSON bodies and the API error type, mapped to PROTOCOL.md in one place."""

from __future__ import annotations

import math
from typing import Any

import orjson
from twisted.web.iweb import IRequest


class ApiError(Exception):
    """An error a client caused; becomes ``{"error": true, "message": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BadRequest(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class Unauthorized(ApiError):
    def __init__(self, message: str = "Unauthorized") -> None:
        super().__init__(401, message)


class NotFound(ApiError):
    def __init__(self, message: str = "Not found") -> None:
        super().__init__(404, message)


class Conflict(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(409, message)


class TooManyRequests(ApiError):
    def __init__(
        self,
        message: str = "Too many requests. Please slow down.",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(429, message)
        #: Seconds until a retry can succeed: sent as ``Retry-After``.
        self.retry_after = retry_after


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": True, "message": message})


def json_response(request: IRequest, value: Any, status: int = 200) -> bytes:
    """Set status and content type; return the encoded body for Klein."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return orjson.dumps(value)


def text_response(request: IRequest, text: str, status: int = 200) -> bytes:
    """A plain-text body, as the original answers some endpoints."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return text.encode("utf-8")


def error_response(request: IRequest, error: ApiError) -> bytes:
    request.setResponseCode(error.status)
    request.setHeader(b"Content-Type", b"application/json")
    if error.status == 405:
        request.setHeader(b"Allow", b", ".join(getattr(error, "allowed", ())))
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        # Whole seconds (RFC 9110), rounded up, at least 1.
        request.setHeader(b"Retry-After", b"%d" % max(1, math.ceil(retry_after)))
    return error_body(error.message)


def read_json(request: IRequest) -> Any:
    """Parse the request body as JSON, or raise :class:`BadRequest`."""
    request.content.seek(0)
    raw = request.content.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("Request body is not valid JSON")


def read_json_object(request: IRequest, *required: str) -> dict[str, Any]:
    """A JSON object whose ``required`` fields are non-empty strings."""
    body = read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    for name in required:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"Field {name!r} is required and must be a string")
    return body
