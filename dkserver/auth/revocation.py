"""Which tokens no longer count, known in memory on every node.

Tokens are verified without a database round trip; so that a ban, a
deletion or ``dkserver token revoke`` still takes effect at once, each
server keeps the few revoked users in a dictionary (:class:`Revocations`)
and :class:`AccountWatch` keeps it fresh: every ``DK_REVOCATION_POLL``
seconds (0.5) it reads the ``accounts_version`` and ``secret_version``
rows of ``server_settings`` (one primary-key read) and, when one changed,
reloads the revoked users (a partial index) or the JWT secrets.  The admin
CLI writes those rows in the transaction of its change, from another
process, so every node sharing the database learns of it within one poll
interval: no message to lose, the database is the truth.

On a change the watch also closes this node's WebSocket connections that
no longer count (close codes in docs/protocol.md) and drops the user cache
(a key rotation changed a public key).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from dkserver.store.accounts import BANNED, DELETED, Revoked

#: Close codes of a connection whose token stopped counting.
CLOSE_TOKEN_REVOKED = 4001
CLOSE_ACCOUNT_CLOSED = 4003

#: How often the versions are read by default (seconds).
DEFAULT_POLL_INTERVAL = 0.5

#: What `Revocations.refusal` answers.
REVOKED = "revoked"


class Revocations:
    """The users whose tokens do not all count, by user id."""

    def __init__(self) -> None:
        self._by_user: dict[str, Revoked] = {}

    def __len__(self) -> int:
        return len(self._by_user)

    def replace(self, rows: Iterable[Revoked]) -> set[str]:
        """Take the database's current list; returns the users it changed."""
        new = {row.user_id: row for row in rows}
        old = self._by_user
        self._by_user = new
        return {
            user_id
            for user_id in new.keys() | old.keys()
            if new.get(user_id) != old.get(user_id)
        }

    def cut_off(self, user_id: str, valid_after_ms: int) -> None:
        """What this node wrote itself (a key rotation), before its next
        poll reads it back."""
        row = self._by_user.get(user_id)
        status = row.status if row is not None else "active"
        self._by_user[user_id] = Revoked(user_id, status, valid_after_ms)

    def refusal(self, user_id: str, iat: float | None) -> str | None:
        """None if a token of ``user_id`` issued at ``iat`` counts; else
        ``banned``, ``deleted`` or ``revoked``."""
        row = self._by_user.get(user_id)
        if row is None:
            return None
        if row.status in (BANNED, DELETED):
            return row.status
        cutoff = row.tokens_valid_after_ms
        # + 0.5: iat is a float of whole milliseconds, maybe a hair below.
        if cutoff is not None and (iat is None or iat * 1000 + 0.5 < cutoff):
            return REVOKED
        return None


def close_code(refusal: str) -> tuple[int, str]:
    if refusal == REVOKED:
        return CLOSE_TOKEN_REVOKED, "token revoked"
    return CLOSE_ACCOUNT_CLOSED, f"account {refusal}"


class AccountWatch:
    """Polls the database's versions and applies what changed."""

    log = Logger()

    def __init__(
        self,
        store: Any,
        revocations: Revocations,
        bus: Any,
        reload_keys: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._revocations = revocations
        self._bus = bus
        self._reload_keys = reload_keys
        self._accounts_version: str | None = None
        self._secret_version: str | None = None
        self._loaded = False
        self._failing = False
        self.polls = 0

    async def load(self) -> None:
        """The first load, before any token is checked (startup)."""
        accounts, secret = await self._store.accounts.versions()
        self._revocations.replace(await self._store.accounts.revoked())
        self._accounts_version, self._secret_version = accounts, secret
        self._loaded = True

    async def poll(self) -> None:
        """One poll; raises what the database raises (see `tick`)."""
        self.polls += 1
        accounts, secret = await self._store.accounts.versions()
        if accounts != self._accounts_version:
            rows = await self._store.accounts.revoked()
            changed = self._revocations.replace(rows)
            self._accounts_version = accounts
            self._store.users.forget()
            if changed:
                self.log.info(
                    "account changes for {count} users applied", count=len(changed)
                )
            self.enforce(changed)
        if secret != self._secret_version:
            await self._reload_keys()
            self._secret_version = secret
            self.log.info("JWT secrets reloaded (rotation)")

    def enforce(self, user_ids: Iterable[str]) -> None:
        """Close this node's connections of ``user_ids`` that stopped counting."""
        for user_id in user_ids:
            for conn in self._bus.connections(user_id):
                refusal = self._revocations.refusal(
                    user_id, getattr(conn, "token_iat", None)
                )
                if refusal is not None:
                    code, reason = close_code(refusal)
                    conn.revoke(code, reason)

    def tick(self) -> Deferred | None:
        """The TimerService's function: never raises (a failed poll is
        logged and the next one tries again)."""
        if not self._loaded:
            return None
        d = Deferred.fromCoroutine(self.poll())
        d.addCallbacks(self._worked, self._failed)
        return d

    def _worked(self, _: object) -> None:
        if self._failing:
            self._failing = False
            self.log.info("revocation poll works again")

    def _failed(self, failure) -> None:
        # Once per outage, not twice a second.
        if not self._failing:
            self._failing = True
            self.log.warn(
                "revocation poll failed (retrying): {reason}",
                reason=failure.getErrorMessage(),
            )

    def service(self, interval: float, clock: Any) -> TimerService:
        service = TimerService(interval, self.tick)
        service.clock = clock
        service.setName("account-watch")
        return service
