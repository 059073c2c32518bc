"""HS256 session tokens, verified strictly and against an injected clock.

pyjwt checks time claims against the wall clock, which a test cannot move,
so its time checks are switched off and ``exp``/``nbf`` are checked here
against ``clock.seconds()``.  Everything else (signature, algorithm) is
pyjwt's, with the algorithm pinned to HS256 so that ``alg: none`` and key
confusion (an RS256/ES256 token "verified" with the HMAC secret) fail.

Whether the user still exists is the caller's check, against the database.
"""

from __future__ import annotations

import math
import warnings

import jwt
from jwt.warnings import InsecureKeyLengthWarning
from twisted.internet.interfaces import IReactorTime

from dkserver.auth.secret import MIN_SECRET_BYTES

ALGORITHM = "HS256"
DEFAULT_LIFETIME = 24 * 60 * 60

#: Real tokens are ~200 bytes; refuse to parse megabytes of attacker input.
MAX_TOKEN_LENGTH = 4096

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


class TokenIssuer:
    """Issue and verify the server's JWTs (claims ``user_id``, ``exp``, ``iat``)."""

    def __init__(
        self,
        secret: bytes,
        clock: IReactorTime,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the token secret must be at least {MIN_SECRET_BYTES} bytes"
            )
        if not lifetime > 0:
            raise ValueError(f"token lifetime must be positive, not {lifetime!r}")
        self._secret = secret
        self._clock = clock
        self._lifetime = lifetime

    def issue(self, user_id: str) -> str:
        """A token for ``user_id`` valid for ``lifetime`` seconds from now."""
        now = self._clock.seconds()
        claims = {
            "user_id": user_id,
            "exp": int(now + self._lifetime),
            "iat": int(now),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: object) -> str:
        """Return the token's user id, or raise InvalidToken."""
        if not isinstance(token, str) or not token:
            raise InvalidToken("token must be a non-empty string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token is too long")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAlgorithmError:
            raise InvalidToken("token algorithm is not allowed")
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature does not verify")
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("token is malformed")

        now = self._clock.seconds()
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
        user_id = claims.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise InvalidToken("token has no user id")
        return user_id
