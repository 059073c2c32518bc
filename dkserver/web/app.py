"""The REST routes of PROTOCOL.md, as a Klein app on an object.

Routes stay thin: parse, call a handler or store method, render.  Every error
becomes the JSON shape of PROTOCOL.md in :meth:`DkApp.api_error`; anything
unexpected is logged and answered with a generic 500.
"""

from __future__ import annotations

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from dkserver.auth.handler import AuthHandler
from dkserver.store import Store
from dkserver.web.responses import (
    ApiError,
    BadRequest,
    NotFound,
    error_response,
    json_response,
    read_json_object,
    text_response,
)


def client_ip(request: IRequest) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", None) or "unknown"


def bearer_token(request: IRequest) -> str | None:
    header = request.getHeader(b"authorization")
    if header and header[:7].lower() == b"bearer ":
        return header[7:].strip().decode("latin-1")
    return None


class DkApp:
    """Every HTTPS route; dependencies are injected so tests can swap them."""

    app = Klein()
    log = Logger()

    def __init__(self, store: Store, auth: AuthHandler) -> None:
        self.store = store
        self.auth = auth

    def resource(self):
        return self.app.resource()

    # -- errors --------------------------------------------------------------

    @app.handle_errors(ApiError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        return error_response(request, failure.value)

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        """Unknown paths (404) and wrong methods (405) from the router."""
        exc: HTTPException = failure.value
        code = exc.code or 500
        error = ApiError(code, exc.name if code != 404 else "Not found")
        if code == 405:
            allowed = getattr(exc, "valid_methods", None) or ()
            error.allowed = [m.encode("ascii") for m in allowed]
        return error_response(request, error)

    @app.handle_errors(Exception)
    def unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("unexpected error on {uri}", failure, uri=request.uri)
        return error_response(request, ApiError(500, "Internal server error"))

    # -- authentication --------------------------------------------------------

    @app.route("/auth/register", methods=["POST"])
    async def register(self, request: IRequest) -> bytes:
        ip = client_ip(request)
        self.auth.check_rate(ip)
        body = read_json_object(request, "user_id", "username", "public_key")
        self.auth.check_rate_user(body["user_id"])
        await self.auth.register(body["user_id"], body["username"], body["public_key"])
        return text_response(request, "User registered successfully", 201)

    @app.route("/auth/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        ip = client_ip(request)
        self.auth.check_rate(ip)
        if request.args.get(b"verify", [b""])[0].lower() == b"true":
            body = read_json_object(request, "user_id", "signature")
            self.auth.check_rate_user(body["user_id"])
            token = await self.auth.verify(body["user_id"], body["signature"], ip)
            return json_response(request, {"token": token})
        body = read_json_object(request, "user_id")
        self.auth.check_rate_user(body["user_id"])
        return json_response(
            request, {"challenge": self.auth.challenge(body["user_id"])}
        )

    @app.route("/auth/users/<string:user_id>", methods=["GET"])
    async def get_user(self, request: IRequest, user_id: str) -> bytes:
        user = await self.store.users.get(user_id)
        if user is None:
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
        return json_response(
            request, {"exists": await self.store.users.exists(user_id)}
        )

    async def authenticated_user(self, request: IRequest) -> str:
        """The user named by the request's bearer token (401 otherwise)."""
        return await self.auth.authenticate(bearer_token(request))


__all__ = ["BadRequest", "DkApp"]
