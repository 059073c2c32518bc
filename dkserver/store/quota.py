"""The per-recipient quota of pending direct messages (count and bytes).

Checked by the group writer, inside the transaction that would store the
message, so a refused message is never stored and the check costs the hot
path a dictionary lookup.  The counters are upper bounds of the truth:

- a recipient's counter is loaded from the database (one grouped query for
  every recipient of a batch seen for the first time, or last loaded more
  than `REFRESH` ago) and raised by every message this writer stores for
  them; deliveries and pruning, here or on another node, only lower the
  truth, so the counter never says less than this node has stored;
- only a message that would take the counter past a limit is checked
  against the database again: the database is the truth, and a refusal is
  always one the database confirmed.  That recheck reads the sizes of the
  recipient's whole backlog (up to the byte quota), so a sender hammering a
  full mailbox must not cause one per frame: after a confirmed refusal the
  next recheck waits `RECHECK`, doubling up to `MAX_RECHECK` while the
  mailbox stays full; a delivery to that recipient on this node (`drained`)
  makes the next message recheck at once.

One process (SQLite, or a single PostgreSQL node) therefore never admits a
message past the limit.  Nodes of a cluster do not see each other's
messages until they reload: each node may admit up to the limit counted
from its last load, so a recipient can exceed the limit by what the other
nodes stored since then (at most `REFRESH` seconds of their traffic to that
recipient, and never more than ``(nodes - 1) * limit``).

The writer runs one transaction at a time; `check_txn` runs inside it (on
the pool's thread) and returns the new values, which `apply` installs on the
reactor thread after the commit, so a rolled-back batch leaves no trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dkserver.store.database import Txn
from dkserver.store.errors import StoreError

#: A counter is reloaded when first used this long after its load (seconds).
REFRESH = 60.0

#: After a refusal the database confirmed, the next recheck of that
#: recipient waits this long (seconds), doubling while it stays full, up to
#: MAX_RECHECK; a delivery to them here ends the wait.
RECHECK = 1.0
MAX_RECHECK = 30.0

#: Bound on the recipients tracked; cleared when exceeded.
MAX_TRACKED = 200_000


class PendingQuotaExceeded(StoreError):
    """The recipient has too many pending messages; the text goes to the
    sender as a system error frame (or a REST error)."""

    def __init__(self, recipient: str, limit: str) -> None:
        super().__init__(
            f"Recipient {recipient!r} has too many undelivered messages "
            f"(pending quota: {limit}); message not stored"
        )
        self.recipient = recipient
        self.limit = limit


@dataclass(slots=True)
class _Counter:
    count: int
    size: int
    loaded: float
    #: Seconds after ``loaded`` before a refusal may ask the database again.
    backoff: float = 0.0


@dataclass(slots=True)
class Staged:
    """What a transaction's check changes, installed by `PendingQuota.apply`
    once it committed."""

    counters: dict[str, _Counter]
    #: recipients whose "drained" mark this check used up
    drained: set[str]

    def __bool__(self) -> bool:
        return bool(self.counters)


def content_size(content: str) -> int:
    """UTF-8 bytes of ``content`` (what the database's octet length says)."""
    return len(content) if content.isascii() else len(content.encode("utf-8"))


class PendingQuota:
    def __init__(
        self,
        max_messages: int | None,
        max_bytes: int | None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._now = monotonic
        self._counters: dict[str, _Counter] = {}
        #: Recipients a delivery on this node made room for (reactor thread).
        self._drained: set[str] = set()
        #: Reloads done (tests, and the cost of the quota in a benchmark).
        self.loads = 0

    @property
    def enabled(self) -> bool:
        return self.max_messages is not None or self.max_bytes is not None

    def _over(self, c: _Counter, size: int) -> str | None:
        """The limit one more message of ``size`` bytes would pass, or None."""
        if self.max_messages is not None and c.count + 1 > self.max_messages:
            return f"{self.max_messages} messages"
        if self.max_bytes is not None and c.size + size > self.max_bytes:
            return f"{self.max_bytes} bytes"
        return None

    def drained(self, recipient: str) -> None:
        """A message to ``recipient`` was delivered here (reactor thread):
        should they be refused now, the next message asks the database."""
        if recipient in self._counters:
            self._drained.add(recipient)

    def check_txn(
        self, txn: Txn, recipients: Sequence[tuple[str, int]]
    ) -> tuple[list[str | None], Staged]:
        """For each ``(recipient, size)`` in order: None (admitted, counted)
        or the limit it would pass.  Returns that and what to `apply` once
        the transaction commits."""
        now = self._now()
        staged: dict[str, _Counter] = {}
        stale = set()
        for user, _ in recipients:
            c = self._counters.get(user)
            if c is None or now - c.loaded > REFRESH:
                stale.add(user)
        if stale:
            staged.update(self._load(txn, stale, now))
        drained = {user for user, _ in recipients if user in self._drained}
        verdicts: list[str | None] = []
        for user, size in recipients:
            c = staged.get(user)
            if c is None:
                old = self._counters[user]
                c = staged[user] = _Counter(
                    old.count, old.size, old.loaded, old.backoff
                )
            over = self._over(c, size)
            # never reload what this transaction loaded: its own admissions
            # are not in the database yet
            if (
                over is not None
                and user not in stale
                and (now - c.loaded >= c.backoff or user in drained)
            ):
                stale.add(user)
                drained.discard(user)
                backoff = c.backoff
                c = staged[user] = self._load(txn, {user}, now)[user]
                over = self._over(c, size)
                if over is not None:
                    c.backoff = min(MAX_RECHECK, max(RECHECK, 2 * backoff))
            if over is None:
                c.count += 1
                c.size += size
                c.backoff = 0.0
            verdicts.append(over)
        return verdicts, Staged(
            staged, {u for u, _ in recipients if u in self._drained}
        )

    def apply(self, staged: Staged) -> None:
        if len(self._counters) + len(staged.counters) > MAX_TRACKED:
            self._counters.clear()
            self._drained.clear()
        self._counters.update(staged.counters)
        self._drained -= staged.drained

    def forget(self) -> None:
        """Drop every counter (after a prune here dropped pending messages);
        each is loaded again when next used."""
        self._counters.clear()
        self._drained.clear()

    def _load(self, txn: Txn, users: set[str], now: float) -> dict[str, _Counter]:
        self.loads += 1
        found = {u: _Counter(0, 0, now) for u in users}
        size = txn.engine.octet_length("content")
        pending = list(users)
        for start in range(0, len(pending), 500):
            chunk = pending[start : start + 500]
            marks = ",".join("?" * len(chunk))
            txn.execute(
                f"SELECT to_user, COUNT(*), COALESCE(SUM({size}), 0) FROM messages"
                f" WHERE to_user IN ({marks}) AND status = 'pending'"
                " GROUP BY to_user",
                chunk,
            )
            for user, count, total in txn.fetchall():
                found[user] = _Counter(int(count), int(total), now)
        return found
