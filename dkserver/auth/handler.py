"""Registration, challenge login and token checks, independent of HTTP.

Routes parse and render; this object decides.  Its errors are
:class:`~dkserver.web.responses.ApiError` so one place maps them to JSON.
"""

from __future__ import annotations

import binascii
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dkserver.auth.challenges import ChallengeStore
from dkserver.auth.signatures import decode_b64_strict, verify_challenge
from dkserver.auth.tokens import InvalidToken, TokenIssuer
from dkserver.auth.validation import (
    MAX_USER_ID_LENGTH,
    ValidationError,
    validate_public_key,
    validate_user_id,
    validate_username,
)
from dkserver.metrics import Metrics
from dkserver.ratelimit import BucketRegistry, settled
from dkserver.store import Store
from dkserver.store.errors import UserExists
from dkserver.web.responses import (
    BadRequest,
    Conflict,
    TooManyRequests,
    Unauthorized,
)


class AuthHandler:
    log = Logger()

    def __init__(
        self,
        store: Store,
        challenges: ChallengeStore | Any,
        tokens: TokenIssuer | None,
        ip_limits: BucketRegistry | Any,
        user_limits: BucketRegistry | Any,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._challenges = challenges
        #: None until `use_tokens`: a secret kept in the database is known
        #: only once the database is open, while requests may already come.
        self._tokens = tokens
        self._tokens_waiting: list[Deferred] = []
        self._ip_limits = ip_limits
        self._user_limits = user_limits
        self._metrics = metrics

    def use_tokens(self, tokens: TokenIssuer) -> None:
        """Sign and check with ``tokens`` from now on; releases any waiters."""
        self._tokens = tokens
        waiting, self._tokens_waiting = self._tokens_waiting, []
        for d in waiting:
            d.callback(tokens)

    async def _issuer(self) -> TokenIssuer:
        """Wait for `use_tokens`: only in the moments after startup."""
        d: Deferred = Deferred()
        self._tokens_waiting.append(d)
        return await d

    async def check_rate(self, client_ip: str) -> None:
        """Per-IP limit for /auth/register and /auth/login (429 past it)."""
        if not await settled(self._ip_limits.try_take(client_ip)):
            self._audit("rate_limited", client_ip, None)
            raise TooManyRequests()

    async def check_rate_user(self, user_id: str) -> None:
        """Per-user-id limit, so many IPs cannot hammer one account."""
        if not await settled(self._user_limits.try_take(user_id[:128])):
            self._audit("rate_limited", None, user_id)
            raise TooManyRequests()

    async def register(self, user_id: str, username: str, public_key: str) -> None:
        try:
            validate_user_id(user_id)
            validate_username(username)
            validate_public_key(public_key)
        except ValidationError as e:
            raise BadRequest(str(e))
        try:
            await self._store.users.create(user_id, username, public_key)
        except UserExists:
            raise Conflict("User ID already exists")
        self.log.info("registered user {user_id}", user_id=user_id)

    async def challenge(self, user_id: str) -> str:
        """Issue a challenge, for unknown users too (no user enumeration).

        Ids longer than any registrable one are refused rather than kept in
        memory for the challenge's lifetime; that reveals nothing, since no
        such user can exist.
        """
        if len(user_id) > MAX_USER_ID_LENGTH:
            raise BadRequest(f"user_id must be at most {MAX_USER_ID_LENGTH} characters")
        return await settled(self._challenges.issue(user_id))

    async def verify(self, user_id: str, signature: str, client_ip: str) -> str:
        challenge = await settled(self._challenges.consume(user_id))
        if challenge is None:
            raise BadRequest(
                "No challenge outstanding for this user; request one first"
            )
        try:
            decode_b64_strict(signature)
        except (ValueError, binascii.Error):
            raise BadRequest("Signature is not valid base64")
        user = await self._store.users.get(user_id)
        if user is None or not verify_challenge(user.public_key, challenge, signature):
            self._metrics.auth_failures.labels(kind="login").inc()
            self._audit("login_failed", client_ip, user_id)
            raise Unauthorized("Invalid signature")
        # Debug: at hundreds of logins a second, formatting this line is real
        # CPU; failures are logged as audit events above.
        self.log.debug("user {user_id} logged in", user_id=user_id)
        return (self._tokens or await self._issuer()).issue(user_id)

    async def authenticate(self, token: str | None) -> str:
        """The user id a bearer token names, if it is valid and the user exists."""
        if not token:
            raise Unauthorized("Missing token")
        try:
            user_id = (self._tokens or await self._issuer()).verify(token)
        except InvalidToken:
            self._metrics.auth_failures.labels(kind="token").inc()
            raise Unauthorized("Invalid or expired token")
        if not await self._store.users.exists(user_id):
            self._metrics.auth_failures.labels(kind="token").inc()
            raise Unauthorized("Invalid or expired token")
        return user_id

    def _audit(self, event: str, client_ip: str | None, user_id: str | None) -> None:
        if user_id is not None and len(user_id) > MAX_USER_ID_LENGTH:
            user_id = user_id[:MAX_USER_ID_LENGTH] + "…"
        self.log.warn(
            "security event {event} from {client_ip} for user {user_id!r}",
            event=event,
            client_ip=client_ip,
            user_id=user_id,
            audit=True,
        )
