"""AuthHandler before the secret is known (it is read from the database
after startup): token work waits for it instead of failing."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from dkserver.auth.challenges import ChallengeStore
from dkserver.auth.handler import AuthHandler
from dkserver.auth.tokens import TokenIssuer
from dkserver.metrics import Metrics
from dkserver.ratelimit import BucketRegistry
from dkserver.web.responses import Unauthorized

SECRET = b"k" * 32


class Users:
    async def exists(self, user_id: str) -> bool:
        return user_id == "alice"


class Store:
    users = Users()


def handler(clock: Clock) -> AuthHandler:
    return AuthHandler(
        Store(),
        ChallengeStore(clock),
        None,
        BucketRegistry(1.0, 10, clock),
        BucketRegistry(1.0, 10, clock),
        Metrics(),
    )


def test_token_checks_wait_for_the_secret_then_use_it():
    clock = Clock()
    auth = handler(clock)
    good = TokenIssuer(SECRET, clock).issue("alice")
    forged = TokenIssuer(b"x" * 32, clock).issue("alice")
    waiting = Deferred.fromCoroutine(auth.authenticate(good))
    refused = Deferred.fromCoroutine(auth.authenticate(forged))
    assert not waiting.called and not refused.called

    auth.use_tokens(TokenIssuer(SECRET, clock))
    assert waiting.result == "alice"
    result = refused.result
    assert isinstance(result, Failure) and result.check(Unauthorized)
    refused.addErrback(lambda _: None)

    # afterwards: no waiting at all
    again = Deferred.fromCoroutine(auth.authenticate(good))
    assert again.result == "alice"
