"""HS256 session tokens, verified strictly and against an injected clock.

pyjwt checks time claims against the wall clock, which a test cannot move,
so its time checks are switched off and ``exp``/``nbf`` are checked here
against ``clock.seconds()``.  Everything else (signature, algorithm) is
pyjwt's, with the algorithm pinned to HS256 so that ``alg: none`` and key
confusion (an RS256/ES256 token "verified" with the HMAC secret) fail.

Tokens carry ``jti`` (a random id), ``iat`` (to the millisecond, so that a
revocation cuts exactly), ``iss`` (this server, `DK_TOKEN_ISSUER`) and, in
the header, ``kid``: which secret signed them.  After a secret rotation the
previous secrets stay in the `KeyRing` until their grace ends (RFC 8725
section 3.10: name the key, check the issuer).  Tokens from before these
claims existed (no ``kid``) verify against any secret still in the ring,
until they expire.

A token whose header is, byte for byte, the one this server writes, and
whose HMAC matches, is read without pyjwt (`TokenIssuer._own_claims`):
its header says HS256 and names a key of the ring, so what pyjwt would
check is the signature and that the payload is a JSON object with its
registered claims well formed.  Anything else -- another header, a
signature that does not match, claims this server does not write -- goes
through pyjwt as before, which decides.  pyjwt's generic path is ~90 µs
of every WebSocket connect; this is a few.

Whether the user still exists, is not banned and has not had their tokens
revoked is the caller's check (dkserver.auth.revocation), as ``iat`` and
the user id this returns.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import jwt
import orjson
from jwt.warnings import InsecureKeyLengthWarning
from twisted.internet.interfaces import IReactorTime

from dkserver.auth.secret import MIN_SECRET_BYTES

ALGORITHM = "HS256"
DEFAULT_LIFETIME = 24 * 60 * 60
DEFAULT_ISSUER = "dkserver"

#: Real tokens are ~200 bytes; refuse to parse megabytes of attacker input.
MAX_TOKEN_LENGTH = 4096

#: The claims `TokenIssuer.issue` writes (and ``nbf``): a payload with any
#: other goes through pyjwt, which validates ``aud``, ``sub`` and the rest.
_OWN_CLAIMS = frozenset({"user_id", "exp", "iat", "jti", "iss", "nbf"})

# pyjwt warns on every encode/decode with a key under 32 bytes.  The secret
# loader already reports that once at startup (16-31 bytes are allowed for
# compatibility with existing deployments), so keep the log readable.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)


class InvalidToken(ValueError):
    """The token must not be accepted; ``reason`` is safe to log or show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def key_id(secret: bytes) -> str:
    """A secret's ``kid``: a hash prefix, which tells nothing of the secret."""
    return hashlib.sha256(b"dkserver kid\0" + secret).hexdigest()[:16]


@dataclass(frozen=True)
class KeyRing:
    """The secret that signs, and earlier ones that still verify until
    their Unix-seconds deadline."""

    current: bytes
    previous: Sequence[tuple[bytes, float]] = ()

    def __post_init__(self) -> None:
        for secret in (self.current, *(s for s, _ in self.previous)):
            if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
                raise ValueError(
                    f"the token secret must be at least {MIN_SECRET_BYTES} bytes"
                )


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: str
    #: Issue instant, Unix seconds (a float for tokens of this version).
    iat: float | None


class TokenIssuer:
    """Issue and verify the server's JWTs (claims ``user_id``, ``exp``,
    ``iat``, ``jti``, ``iss``; header ``kid``)."""

    def __init__(
        self,
        secret: bytes | KeyRing,
        clock: IReactorTime,
        lifetime: float = DEFAULT_LIFETIME,
        issuer: str = DEFAULT_ISSUER,
    ) -> None:
        if not lifetime > 0:
            raise ValueError(f"token lifetime must be positive, not {lifetime!r}")
        self._clock = clock
        self.lifetime = lifetime
        self._issuer = issuer
        self.use_keys(secret if isinstance(secret, KeyRing) else KeyRing(secret))

    def use_keys(self, keys: KeyRing) -> None:
        """Sign with ``keys.current`` from now on (a rotation)."""
        self._secret = keys.current
        self.kid = key_id(keys.current)
        # pyjwt's header for these tokens (sorted keys), encoded once.
        self._head = _b64url(
            orjson.dumps({"alg": ALGORITHM, "kid": self.kid, "typ": "JWT"})
        )
        self._verifiers = {self.kid: (keys.current, math.inf)}
        for secret, until in keys.previous:
            self._verifiers.setdefault(key_id(secret), (secret, until))
        #: The header text this server writes for each key of the ring.
        self._own_heads = {
            _b64url(orjson.dumps({"alg": ALGORITHM, "kid": kid, "typ": "JWT"})).decode(
                "ascii"
            ): kid
            for kid in self._verifiers
        }

    def now(self) -> float:
        """The clock tokens are issued and checked by (Unix seconds)."""
        return self._clock.seconds()

    def issue(self, user_id: str) -> str:
        """A token for ``user_id`` valid for ``lifetime`` seconds from now."""
        now = self._clock.seconds()
        claims = {
            "user_id": user_id,
            "exp": int(now + self.lifetime),
            "iat": math.floor(now * 1000) / 1000,
            "jti": secrets.token_urlsafe(16),
            "iss": self._issuer,
        }
        # What jwt.encode writes, without its per-call header merging, JSON
        # encoder and algorithm lookup (~15 µs of a login).
        payload = orjson.dumps(claims)
        if not payload.isascii():
            # pyjwt escapes non-ASCII (json.dumps): keep its exact bytes.
            payload = json.dumps(claims, separators=(",", ":")).encode()
        signing = self._head + b"." + _b64url(payload)
        mac = hmac.digest(self._secret, signing, "sha256")
        return (signing + b"." + _b64url(mac)).decode("ascii")

    def verify(self, token: object) -> str:
        """Return the token's user id, or raise InvalidToken."""
        return self.verify_claims(token).user_id

    def verify_claims(self, token: object) -> Claims:
        """The token's user id and issue time, or raise InvalidToken."""
        if not isinstance(token, str) or not token:
            raise InvalidToken("token must be a non-empty string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token is too long")
        now = self._clock.seconds()
        own = self._own_claims(token, now)
        if own is not None:
            return self._checked(*own, now)
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError):
            raise InvalidToken("token is malformed")
        if kid is None:
            # From before kid existed: any secret still in the ring.
            candidates = [s for s, until in self._verifiers.values() if now < until]
        else:
            found = self._verifiers.get(kid) if isinstance(kid, str) else None
            if found is None or now >= found[1]:
                raise InvalidToken("token key is not known")
            candidates = [found[0]]
        claims = None
        for secret in candidates:
            try:
                claims = self._decode(token, secret)
                break
            except InvalidToken as e:
                if e.reason != "token signature does not verify":
                    raise
        if claims is None:
            raise InvalidToken("token signature does not verify")
        return self._checked(claims, kid, now)

    def _own_claims(self, token: str, now: float) -> tuple[dict, str] | None:
        """``(claims, kid)`` of a token in exactly this server's form with
        a matching signature, by a key still in the ring; None for anything
        else (then pyjwt decides, with its own errors)."""
        head, _, rest = token.partition(".")
        kid = self._own_heads.get(head)
        if kid is None:
            return None
        secret, until = self._verifiers[kid]
        payload, dot, signature = rest.partition(".")
        if not dot or now >= until:
            return None
        try:
            signing = token[: len(head) + 1 + len(payload)].encode("ascii")
            mac = _b64url(hmac.digest(secret, signing, "sha256"))
            if not hmac.compare_digest(mac, signature.encode("ascii")):
                return None
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            claims = orjson.loads(raw)
        except (ValueError, UnicodeError, orjson.JSONDecodeError):
            return None
        if (
            type(claims) is not dict
            or not claims.keys() <= _OWN_CLAIMS
            or not isinstance(claims.get("jti", ""), str)
        ):
            return None
        return claims, kid

    def _checked(self, claims: dict, kid: str | None, now: float) -> Claims:
        """The checks after the signature, whichever way it was verified."""
        exp = claims.get("exp")
        if exp is None:
            raise InvalidToken("token has no expiry")
        if not _is_number(exp):
            raise InvalidToken("token expiry is not a number")
        if now >= exp:
            raise InvalidToken("token has expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not _is_number(nbf) or now < nbf):
            raise InvalidToken("token is not valid yet")
        if kid is not None and claims.get("iss") != self._issuer:
            raise InvalidToken("token issuer is not this server")
        user_id = claims.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise InvalidToken("token has no user id")
        iat = claims.get("iat")
        return Claims(user_id, iat if _is_number(iat) else None)

    @staticmethod
    def _decode(token: str, secret: bytes) -> dict:
        try:
            return jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_iss": False,
                },
            )
        except jwt.InvalidAlgorithmError:
            raise InvalidToken("token algorithm is not allowed")
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature does not verify")
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("token is malformed")
