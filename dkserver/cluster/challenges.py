"""Login challenges in Redis: issued by one node, verified on any, used once.

``SET key challenge PX ttl`` issues (replacing the user's older one, as the
local store does) and ``GETDEL`` consumes: the first verify attempt on any
node takes it, so a challenge can never be tried twice.  Redis expires it
after the TTL; nothing needs pruning.

Redis unreachable: the node issues and consumes from its own
:class:`~dkserver.auth.challenges.ChallengeStore`, so logins go on; a verify
that lands on another node than its challenge then fails with "no challenge
outstanding" and the client asks again.  A challenge issued before the
outage and still in Redis is consumed there once Redis is back.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from dkserver.auth.challenges import ChallengeStore, new_challenge
from dkserver.cluster.shared import SharedRedis, SharedStateUnavailable

CHALLENGE_PREFIX = "dk:chal:"


class SharedChallenges:
    """ChallengeStore's ``issue``/``consume``, answering through Deferreds."""

    def __init__(
        self, shared: SharedRedis, ttl: float, fallback: ChallengeStore
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"challenge ttl must be positive, not {ttl!r}")
        self._shared = shared
        self._ttl_ms = max(1, round(ttl * 1000))
        self.fallback = fallback

    def issue(self, user_id: str) -> Deferred:
        return Deferred.fromCoroutine(self._issue(user_id))

    def consume(self, user_id: str) -> Deferred:
        return Deferred.fromCoroutine(self._consume(user_id))

    async def _issue(self, user_id: str) -> str:
        challenge = new_challenge()
        try:
            await self._shared.command(
                "SET", CHALLENGE_PREFIX + user_id, challenge, "PX", self._ttl_ms
            )
        except SharedStateUnavailable:
            return self.fallback.issue(user_id)
        return challenge

    async def _consume(self, user_id: str) -> str | None:
        try:
            found = await self._shared.command("GETDEL", CHALLENGE_PREFIX + user_id)
        except SharedStateUnavailable:
            return self.fallback.consume(user_id)
        local = self.fallback.consume(user_id)  # issued during an outage
        if found is None:
            return local
        return found.decode() if isinstance(found, bytes) else found

    def prune(self) -> int:
        return self.fallback.prune()
