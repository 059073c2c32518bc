"""Outstanding login challenges, single-use, short-lived and bounded.

The original server kept challenges in a map forever and let them be reused;
here a challenge is consumed by the first verify attempt, expires after
``ttl`` seconds and at most ``max_outstanding`` are held, so a flood of
``POST /auth/login`` requests cannot grow memory without bound.
"""

from __future__ import annotations

import base64
import secrets
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: Random bytes per challenge (PROTOCOL.md: base64 of 32 random bytes).
CHALLENGE_BYTES = 32


def new_challenge() -> str:
    return base64.b64encode(secrets.token_bytes(CHALLENGE_BYTES)).decode("ascii")


class ChallengeStore:
    """At most one outstanding challenge per user id.

    Entries are kept in issue order.  Because every challenge lives for the
    same ``ttl``, issue order is also expiry order, so the oldest entry is
    both the first to expire and the one to evict when the store is full.
    Eviction under a flood may drop a legitimate user's challenge; that user
    simply asks again, which beats unbounded memory (and login is rate
    limited per client IP by the caller).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        ttl: float = 60.0,
        max_outstanding: int = 100_000,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"challenge ttl must be positive, not {ttl!r}")
        if max_outstanding < 1:
            raise ValueError(
                f"max_outstanding must be at least 1, not {max_outstanding!r}"
            )
        self._clock = clock
        self._ttl = float(ttl)
        self._max = max_outstanding
        # user id -> (challenge, expiry time on self._clock)
        self._challenges: OrderedDict[str, tuple[str, float]] = OrderedDict()
        #: Challenges dropped because the store was full (for metrics).
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._challenges)

    def issue(self, user_id: str) -> str:
        """Return a fresh challenge for ``user_id``, replacing any older one.

        Issued for unknown user ids too, so the answer does not reveal which
        ids exist; the caller decides whether the user is real at verify time.
        """
        now = self._clock.seconds()
        challenge = new_challenge()
        # Remove first so the replacement moves to the end (newest) of the order.
        self._challenges.pop(user_id, None)
        self._drop_expired(now)
        while len(self._challenges) >= self._max:
            self._challenges.popitem(last=False)
            self.evictions += 1
            if self.evictions == 1 or self.evictions % 10_000 == 0:
                self.log.warn(
                    "challenge store full ({max} outstanding); evicted the oldest "
                    "({evictions} evictions so far)",
                    max=self._max,
                    evictions=self.evictions,
                )
        self._challenges[user_id] = (challenge, now + self._ttl)
        return challenge

    def consume(self, user_id: str) -> str | None:
        """Remove and return the user's challenge, or None if absent or expired.

        Removal happens whatever the caller's verification outcome will be,
        so a challenge can never be tried twice.
        """
        entry = self._challenges.pop(user_id, None)
        if entry is None:
            return None
        challenge, expires = entry
        if self._clock.seconds() >= expires:
            return None
        return challenge

    def prune(self) -> int:
        """Drop expired challenges; meant to be called periodically."""
        return self._drop_expired(self._clock.seconds())

    def _drop_expired(self, now: float) -> int:
        # Issue order is expiry order, so stop at the first live entry.  If the
        # clock ever stepped backwards, an expired entry may hide behind a live
        # one for a while; consume() still refuses it.
        removed = 0
        while self._challenges:
            _, (_, expires) = next(iter(self._challenges.items()))
            if now < expires:
                break
            self._challenges.popitem(last=False)
            removed += 1
        return removed
