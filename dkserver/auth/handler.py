"""Registration, challenge login and token checks, independent of HTTP.

Routes parse and render; this object decides.  Its errors are
:class:`~dkserver.web.responses.ApiError` so one place maps them to JSON.
"""

from __future__ import annotations

import binascii
import math
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dkserver.auth.challenges import ChallengeStore
from dkserver.auth.revocation import REVOKED, Revocations
from dkserver.auth.signatures import (
    decode_b64_strict,
    verify_challenge,
    verify_rotate_key,
)
from dkserver.auth.tokens import Claims, InvalidToken, TokenIssuer
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
from dkserver.store.accounts import ACTIVE, InviteRefused, UnknownUser
from dkserver.store.errors import UserExists
from dkserver.web.responses import (
    ApiError,
    BadRequest,
    Conflict,
    TooManyRequests,
    Unauthorized,
)

#: ``DK_REGISTRATION`` values.
REGISTRATION_MODES = ("open", "closed", "invite")

_CLOSED_MESSAGES = {
    "banned": "Account is banned",
    "deleted": "Account has been deleted",
}


class Forbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, message)


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
        revocations: Revocations | None = None,
        registration: str = "open",
    ) -> None:
        self._store = store
        self.revocations = revocations if revocations is not None else Revocations()
        self._registration = registration
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

    async def register(
        self,
        user_id: str,
        username: str,
        public_key: str,
        invite: object = None,
        client_ip: str | None = None,
    ) -> None:
        if self._registration == "closed":
            raise Forbidden("Registration is closed")
        try:
            validate_user_id(user_id)
            validate_username(username)
            validate_public_key(public_key)
        except ValidationError as e:
            raise BadRequest(str(e))
        if self._registration == "invite":
            if invite is None:
                raise Forbidden("Registration needs an invite code")
            if not isinstance(invite, str) or not invite or len(invite) > 256:
                raise BadRequest("Field 'invite' must be a non-empty string")
        else:
            invite = None
        try:
            await self._store.users.create(user_id, username, public_key, invite=invite)
        except UserExists:
            raise Conflict("User ID already exists")
        except InviteRefused:
            self._audit("invite_refused", client_ip, user_id)
            raise Forbidden("Invite code is not valid")
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

    async def _challenged(self, user_id: str, signature: str) -> tuple[str, Any]:
        """Consume ``user_id``'s outstanding challenge and look the user up
        (None: unknown), refusing a missing challenge or a signature that is
        not base64 (login and key rotation both sign a challenge)."""
        challenge = await settled(self._challenges.consume(user_id))
        if challenge is None:
            raise BadRequest(
                "No challenge outstanding for this user; request one first"
            )
        try:
            decode_b64_strict(signature)
        except (ValueError, binascii.Error):
            raise BadRequest("Signature is not valid base64")
        return challenge, await self._store.users.get(user_id)

    async def verify(self, user_id: str, signature: str, client_ip: str) -> str:
        challenge, user = await self._challenged(user_id, signature)
        if user is None or not verify_challenge(user.public_key, challenge, signature):
            self._metrics.auth_failures.labels(kind="login").inc()
            self._audit("login_failed", client_ip, user_id)
            raise Unauthorized("Invalid signature")
        # Only the key's holder learns that the account is closed.
        self._refuse_closed(user_id, user.status, client_ip)
        # No line per successful login: twistd writes debug events too, and
        # at hundreds of logins a second that is real CPU; failures are
        # logged as audit events above.
        return (self._tokens or await self._issuer()).issue(user_id)

    def _refuse_closed(self, user_id: str, status: str, client_ip: str | None) -> None:
        refusal = self.revocations.refusal(user_id, math.inf)
        if status == ACTIVE and refusal is None:
            return
        self._metrics.auth_failures.labels(kind="login").inc()
        self._audit("login_refused_closed_account", client_ip, user_id)
        raise Forbidden(_CLOSED_MESSAGES.get(refusal or status, "Account is closed"))

    async def rotate_key(
        self, user_id: str, public_key: str, signature: str, client_ip: str
    ) -> str:
        """Replace ``user_id``'s key, proven by the old key's signature over a
        fresh challenge (so a recorded request cannot be replayed); every
        token issued before stops working, and a new one is returned."""
        try:
            validate_public_key(public_key)
        except ValidationError as e:
            raise BadRequest(str(e))
        challenge, user = await self._challenged(user_id, signature)
        if user is None or not verify_rotate_key(
            user.public_key, user_id, challenge, public_key, signature
        ):
            self._metrics.auth_failures.labels(kind="rotate_key").inc()
            self._audit("rotate_key_failed", client_ip, user_id)
            raise Unauthorized("Invalid signature")
        self._refuse_closed(user_id, user.status, client_ip)
        issuer = self._tokens or await self._issuer()
        now_ms = math.floor(issuer.now() * 1000)
        try:
            await self._store.accounts.rotate_key(user_id, public_key, now_ms)
        except UnknownUser:
            raise Forbidden("Account is closed")
        # This node at once; the others at their next poll.
        self.revocations.cut_off(user_id, now_ms)
        self._store.users.forget()
        self.log.warn(
            "security event key_rotated for user {user_id!r} from {client_ip}",
            user_id=user_id,
            client_ip=client_ip,
            audit=True,
        )
        return issuer.issue(user_id)

    async def authenticate(self, token: str | None) -> str:
        """The user id a bearer token names, if it is valid and the user exists."""
        return (await self.authenticate_claims(token)).user_id

    async def authenticate_claims(self, token: str | None) -> Claims:
        """As `authenticate`, with the token's issue time (for /ws, whose
        connection is closed if its token is revoked later)."""
        if not token:
            raise Unauthorized("Missing token")
        try:
            claims = (self._tokens or await self._issuer()).verify_claims(token)
        except InvalidToken:
            self._metrics.auth_failures.labels(kind="token").inc()
            raise Unauthorized("Invalid or expired token")
        refusal = self.revocations.refusal(claims.user_id, claims.iat)
        if refusal is not None:
            self._metrics.auth_failures.labels(kind="token").inc()
            if refusal == REVOKED:
                raise Unauthorized("Token has been revoked")
            raise Forbidden(_CLOSED_MESSAGES[refusal])
        if not await self._store.users.exists(claims.user_id):
            self._metrics.auth_failures.labels(kind="token").inc()
            raise Unauthorized("Invalid or expired token")
        return claims

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
