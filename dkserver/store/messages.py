"""Stored messages and broadcast deliveries.

Every write takes a batch and runs as one transaction, so a group-commit
writer can turn many frames into a single fsync.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dkserver import timestamps
from dkserver.store.database import Database, Txn
from dkserver.store.engine import ESCAPED, decode_content, encode_content
from dkserver.store.errors import IntegrityError, StoreError

PENDING = "pending"
DELIVERED = "delivered"

_COLUMNS = (
    "m.id, m.from_user, m.to_user, m.timestamp, m.content, m.status,"
    " m.is_broadcast, m.signature, m.is_forward_message, m.client_timestamp,"
    " m.received_ns"
)


# Not frozen: one is built per message, and a frozen dataclass's __init__
# costs ~4x a plain one's (object.__setattr__ per field).  The writer never
# changes one; a changed copy is dataclasses.replace.
@dataclass(slots=True)
class NewMessage:
    """A message to store; the caller has already validated ``timestamp``."""

    from_user: str
    to_user: str
    #: RFC 3339 text exactly as the client sent it (signatures cover it).
    timestamp: str
    content: str
    is_broadcast: bool
    signature: str | None
    is_forward_message: bool
    #: Server receive time, Unix ns.
    received_ns: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    from_user: str
    to_user: str
    #: RFC 3339, same instant to the nanosecond as the client sent.
    timestamp: str
    content: str
    status: str
    is_broadcast: bool
    #: ``None`` when the message carried none.
    signature: str | None
    is_forward_message: bool
    #: When the server received (and stored) it, Unix ns; None in rows the
    #: original server wrote.
    received_ns: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """The PROTOCOL.md message object (false flags and empty signature omitted)."""
        wire: dict[str, Any] = {
            "id": self.id,
            "from": self.from_user,
            "to": self.to_user,
            "timestamp": self.timestamp,
            "content": self.content,
            "status": self.status,
        }
        if self.is_broadcast:
            wire["is_broadcast"] = True
        if self.signature:
            wire["signature"] = self.signature
        if self.is_forward_message:
            wire["is_forward_message"] = True
        return wire


class MessageStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def add_many(self, msgs: Sequence[NewMessage]) -> list[int]:
        """Store messages as ``pending``; returns their ids in order.

        Raises `StoreError` (and stores none of the batch) if a sender is not
        a registered user.
        """
        if not msgs:
            return []
        return await self._pool.runInteraction(_add_many_txn, list(msgs))

    async def mark_delivered(
        self, ids: Sequence[int], delivered_ns: int | None = None
    ) -> None:
        """Mark pending messages delivered (at ``delivered_ns``, default now);
        ids already delivered are left alone."""
        if ids:
            await self._pool.runInteraction(
                mark_delivered_txn,
                list(ids),
                time.time_ns() if delivered_ns is None else delivered_ns,
            )

    async def pending_direct(
        self, user_id: str, limit: int | None = None, after_id: int = 0
    ) -> list[StoredMessage]:
        """Direct messages still pending for ``user_id``, oldest first.

        ``after_id`` pages through a large backlog without skipping rows that
        another connection marks delivered meanwhile.
        """
        return await self._pool.runInteraction(
            _pending_direct_txn, user_id, limit, after_id
        )

    async def undelivered_broadcasts(
        self, user_id: str, limit: int | None = None, after_id: int = 0
    ) -> list[StoredMessage]:
        """Broadcasts since the user registered, by others, not yet given to them."""
        return await self._pool.runInteraction(
            _undelivered_broadcasts_txn, user_id, limit, after_id
        )

    async def backlog_first_pages(
        self, user_id: str, limit: int
    ) -> tuple[list[StoredMessage], list[StoredMessage] | None]:
        """A connect's first read, in one trip to the database thread: the
        first ``limit`` pending direct messages and, when those are all of
        them, the first ``limit`` undelivered broadcasts (None when the
        direct messages go on: their next page comes first).  A reconnect
        storm makes this read once per connect."""
        return await self._pool.runInteraction(_backlog_first_txn, user_id, limit)

    async def backlog_first_pages_many(
        self, reads: Sequence[tuple[str, int]]
    ) -> list[tuple[list[StoredMessage], list[StoredMessage] | None]]:
        """`backlog_first_pages` for each ``(user_id, limit)``, in order, in
        one transaction: what `dkserver.store.backlog` gathers in a storm."""
        return await self._pool.runInteraction(_backlog_first_many_txn, list(reads))

    async def record_broadcast_deliveries(
        self, pairs: Sequence[tuple[int, str]]
    ) -> None:
        """Remember that ``(message_id, user_id)`` got the broadcast (idempotent)."""
        if pairs:
            await self._pool.runInteraction(_record_deliveries_txn, list(pairs))

    async def pending_count(self) -> int:
        """Direct messages still pending, all recipients (a full count: run
        it at start and, where the engine allows, now and then)."""
        return await self._pool.runInteraction(_pending_count_txn)

    async def get(self, message_id: int) -> StoredMessage | None:
        return await self._pool.runInteraction(_get_txn, message_id)


def _row(row: tuple[Any, ...], escaped: bool = False) -> StoredMessage:
    """``escaped``: the backend stores content with `encode_content`."""
    mid, from_user, to_user, ts, content, status, bcast, sig, fwd, client_ts, rns = row
    if escaped and content[:1] == ESCAPED:
        content = decode_content(content)
    if client_ts:
        text = client_ts  # the sender's exact text (schema v4)
    elif ts:
        text = timestamps.from_storage(ts)  # as the original renders its rows
    else:
        text = timestamps.ZERO_TIME
    return StoredMessage(
        id=mid,
        from_user=from_user,
        to_user=to_user,
        timestamp=text,
        content=content,
        status=status,
        is_broadcast=bool(bcast),
        signature=sig or None,
        is_forward_message=bool(fwd),
        received_ns=rns,
    )


def _limit(txn: Txn, limit: int | None) -> int | None:
    return txn.engine.no_limit if limit is None else limit


_MESSAGE_COLUMNS = (
    "id",
    "from_user",
    "to_user",
    "timestamp",
    "content",
    "status",
    "is_broadcast",
    "signature",
    "is_forward_message",
    "received_ns",
    "client_timestamp",
)


def insert_messages_txn(txn: Txn, msgs: Sequence[NewMessage]) -> list[int]:
    """Insert messages as ``pending`` in one statement run; their ids.

    The engine assigns the ids up front, in arrival order, and inserts the
    rows at once (SQLite: multi-row ``INSERT``s of a few fixed sizes;
    PostgreSQL: ``COPY`` or one multi-row ``INSERT``).  ``timestamp`` is
    written in the original's format (it reads this file too), and
    ``client_timestamp`` only when rendering that would not give back the
    client's text (see `timestamps.storage_columns`).
    """
    ids = txn.engine.next_message_ids(txn, len(msgs))
    rows = [
        (
            mid,
            m.from_user,
            m.to_user,
            stored_ts,
            m.content,
            PENDING,
            int(m.is_broadcast),
            m.signature or "",  # the original writes Go's "" for none
            int(m.is_forward_message),
            m.received_ns,
            client_ts,
        )
        for mid, m in zip(ids, msgs, strict=True)
        for stored_ts, client_ts in (timestamps.storage_columns(m.timestamp),)
    ]
    if txn.engine.refuses_nul:  # PostgreSQL only: no cost on SQLite's hot path
        rows = [(*r[:4], encode_content(r[4]), *r[5:]) for r in rows]
    txn.engine.insert_rows(txn, "messages", _MESSAGE_COLUMNS, rows)
    return ids


def _add_many_txn(txn: Txn, msgs: list[NewMessage]) -> list[int]:
    try:
        return insert_messages_txn(txn, msgs)
    except IntegrityError as e:
        raise StoreError(f"cannot store messages: {e}") from e


def mark_delivered_txn(txn: Txn, ids: Sequence[int], delivered_ns: int) -> int:
    """Mark pending messages delivered at ``delivered_ns`` (retention counts
    from it; a direct message's only, broadcasts are never marked); how many
    were still pending."""
    return txn.engine.for_ids(
        txn,
        "UPDATE messages SET status = 'delivered', delivered_ns = ?"
        " WHERE {id} AND status = 'pending'",
        ids,
        (delivered_ns,),
    )


def _pending_direct_txn(
    txn: Txn, user_id: str, limit: int | None, after_id: int = 0
) -> list[StoredMessage]:
    txn.execute(
        f"SELECT {_COLUMNS} FROM messages m"
        # to_user alone excludes broadcasts (to 'broadcast', a reserved id);
        # an is_broadcast term here made the planner pick the broadcast index
        # and scan every message (22 ms at 100k rows instead of 0.1 ms).
        " WHERE m.to_user = ? AND m.status = 'pending' AND m.id > ?"
        " ORDER BY m.id LIMIT ?",
        (user_id, after_id, _limit(txn, limit)),
    )
    return [_row(r, txn.engine.refuses_nul) for r in txn.fetchall()]


def _undelivered_broadcasts_txn(
    txn: Txn, user_id: str, limit: int | None, after_id: int = 0
) -> list[StoredMessage]:
    txn.execute("SELECT broadcast_floor FROM users WHERE user_id = ?", (user_id,))
    row = txn.fetchone()
    if row is None:
        return []
    floor = row[0]
    if after_id <= floor:
        # Read before the broadcasts: on PostgreSQL each statement sees the
        # commits made before it began, and a broadcast committed between
        # the two reads must not end up below the floor unsent.  Ids commit
        # in order (the engine's next_message_ids), so every broadcast up to
        # this maximum is visible to the next statement.
        txn.execute("SELECT COALESCE(MAX(id), 0) FROM messages WHERE is_broadcast = 1")
        newest = txn.fetchone()[0]
        if newest <= floor:
            # No broadcast above the floor (the common reconnect): nothing to
            # send and the floor stays.  One committed after the maximum was
            # read is above it, so a later scan (or the live path) sends it.
            return []
    txn.execute(
        f"SELECT {_COLUMNS} FROM messages m JOIN users u ON u.user_id = ?"
        " WHERE m.is_broadcast = 1 AND m.id > ?"
        " AND m.received_ns >= u.registered_ns"
        " AND m.from_user != u.user_id"
        " AND NOT EXISTS (SELECT 1 FROM broadcast_deliveries d"
        "  WHERE d.message_id = m.id AND d.user_id = u.user_id)"
        " ORDER BY m.id LIMIT ?",
        (user_id, max(after_id, floor), _limit(txn, limit)),
    )
    found = [_row(r, txn.engine.refuses_nul) for r in txn.fetchall()]
    if after_id <= floor:
        # Everything below the first broadcast still to send is done: raise
        # the floor so the next connect skips it (see schema v3).
        new_floor = found[0].id - 1 if found else newest
        if new_floor > floor:
            # Never lowered: a concurrent scan (another node) may be ahead.
            txn.execute(
                "UPDATE users SET broadcast_floor = ?"
                " WHERE user_id = ? AND broadcast_floor < ?",
                (new_floor, user_id, new_floor),
            )
    return found


def _backlog_first_txn(
    txn: Txn, user_id: str, limit: int
) -> tuple[list[StoredMessage], list[StoredMessage] | None]:
    # Each statement sees the commits made before it began (SQLite's one
    # connection; PostgreSQL's READ COMMITTED), as in two transactions.
    direct = _pending_direct_txn(txn, user_id, limit)
    if len(direct) >= limit:
        return direct, None
    return direct, _undelivered_broadcasts_txn(txn, user_id, limit)


def _backlog_first_many_txn(
    txn: Txn, reads: list[tuple[str, int]]
) -> list[tuple[list[StoredMessage], list[StoredMessage] | None]]:
    # One after another, each as _backlog_first_txn alone: every statement
    # still sees the commits made before it began.  In user id order: a read
    # may raise its user's broadcast floor, whose row lock (PostgreSQL) is
    # held until the commit, so trips running side by side (this node's and
    # others') must take those locks in one order or deadlock each other.
    results: list = [None] * len(reads)
    for i in sorted(range(len(reads)), key=lambda i: reads[i][0]):
        user_id, limit = reads[i]
        results[i] = _backlog_first_txn(txn, user_id, limit)
    return results


DELIVERY_COLUMNS = ("message_id", "user_id")


def _record_deliveries_txn(txn: Txn, pairs: list[tuple[int, str]]) -> None:
    try:
        txn.engine.insert_new_rows(txn, "broadcast_deliveries", DELIVERY_COLUMNS, pairs)
    except IntegrityError as e:
        raise StoreError(f"cannot record broadcast delivery: {e}") from e


def _pending_count_txn(txn: Txn) -> int:
    # Broadcasts keep status 'pending' (their deliveries are rows of
    # broadcast_deliveries) and are addressed to the reserved 'broadcast'.
    # Written so that the partial index messages_pending_v2 (to_user, id)
    # WHERE status = 'pending' answers alone: no row is read (is_broadcast
    # is not in it; 1M messages, 100k of them broadcasts: 1 ms, not 50).
    txn.execute(
        "SELECT COUNT(*) FROM messages"
        " WHERE status = 'pending' AND to_user <> 'broadcast'"
    )
    return int(txn.fetchone()[0])


def _get_txn(txn: Txn, message_id: int) -> StoredMessage | None:
    txn.execute(f"SELECT {_COLUMNS} FROM messages m WHERE m.id = ?", (message_id,))
    row = txn.fetchone()
    return None if row is None else _row(row, txn.engine.refuses_nul)
