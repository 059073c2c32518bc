"""Retention: deleting old rows in small transactions, rolled up first.

Each public method runs one short transaction of at most ``batch`` rows, so a
prune never holds the database (SQLite's one connection, or PostgreSQL row
locks) for longer than a small batch takes; the group writer's commits run
between them.  What goes, oldest first:

- ``delivered``: direct messages delivered before the cutoff (by
  ``delivered_ns``, schema v8, through its partial index);
- ``broadcasts``: broadcasts sent before the cutoff, with their
  ``broadcast_deliveries`` rows (a broadcast has many recipients, so it is
  counted from when it was sent);
- ``pending``: direct messages still undelivered after the pending bound
  ("dropped": counted apart, logged and in a metric);
- ``events``: message events before the roll-up cutoff;
- ``sessions``: sessions that ended before the roll-up cutoff (with any
  events of theirs still left).

Before a row goes, what it contributed to ``/stats`` is added to
``stats_daily`` in the same transaction, from the rows the ``DELETE`` itself
returned, so a row deleted by someone else meanwhile (``dkserver prune`` while
the server runs) is never counted twice.  On PostgreSQL every step also
takes a transaction-scoped advisory lock with ``pg_try_advisory_xact_lock``:
when another node (or the CLI) holds it, the step does nothing and says
``busy``, and the pass ends; the other one is pruning.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from dkserver import timestamps
from dkserver.store.database import Database, Txn

#: ``pg_try_advisory_xact_lock`` key of a prune step: the first 8 bytes of
#: sha256(b"dkserver.prune"), one constant for every node.
PRUNE_LOCK = 0x1E3B_5B1D_94C2_07A1

#: The steps, in the order a pass runs them.
KINDS = ("delivered", "broadcasts", "pending", "events", "sessions")

_DAY_NS = 86_400 * 1_000_000_000
_NS = 1_000_000_000

#: ``stats_daily.day`` of a row without a readable time.
UNKNOWN_DAY = "1970-01-01"


@dataclass(frozen=True)
class Cutoffs:
    """Unix ns before which each kind goes; None keeps it."""

    delivered: int | None
    broadcasts: int | None
    pending: int | None
    rollup: int | None

    @classmethod
    def at(
        cls,
        now_ns: int,
        retention_days: float | None,
        pending_max_days: float | None,
        rollup_days: float | None,
    ) -> Cutoffs:
        def before(days: float | None) -> int | None:
            return None if days is None else now_ns - int(days * _DAY_NS)

        keep = before(retention_days)
        return cls(keep, keep, before(pending_max_days), before(rollup_days))

    def of(self, kind: str) -> int | None:
        if kind in ("events", "sessions"):
            return self.rollup
        return getattr(self, kind)


@dataclass
class Step:
    """What one step (one transaction) did."""

    #: table -> rows deleted
    deleted: dict[str, int] = field(default_factory=dict)
    #: pending direct messages dropped (also in ``deleted["messages"]``)
    dropped: int = 0
    #: nothing more of this kind to delete now
    done: bool = False
    #: another node (or ``dkserver prune``) holds the prune lock
    busy: bool = False
    #: where a keyset scan (``pending``) goes on from
    cursor: int = 0


def day_of_ns(ns: int | None) -> str:
    if ns is None:
        return UNKNOWN_DAY
    return _day_text(ns // _DAY_NS)


@functools.lru_cache(maxsize=4096)
def _day_text(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


def day_of_s(seconds: int | None) -> str:
    return UNKNOWN_DAY if seconds is None else day_of_ns(int(seconds) * _NS)


class RetentionStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def step(self, kind: str, cutoff: int, batch: int, cursor: int = 0) -> Step:
        """Delete at most ``batch`` rows of ``kind`` older than ``cutoff``
        (Unix ns), in one transaction."""
        return await self._pool.runInteraction(_STEPS[kind], cutoff, batch, cursor)

    async def count(self, cutoffs: Cutoffs) -> dict[str, int]:
        """What a pass would delete now, per kind (``dkserver prune
        --dry-run``); deletes nothing.  Full scans: for the CLI, not for the
        server's timer."""
        return await self._pool.runInteraction(_count_txn, cutoffs)

    async def rollups(self) -> list[tuple[str, str, int, int]]:
        """Every ``stats_daily`` row: ``(day, metric, bucket, count)``."""
        return await self._pool.runInteraction(_rollups_txn)


def _add_rollups(txn: Txn, counts: Counter) -> None:
    if counts:
        txn.executemany(
            "INSERT INTO stats_daily (day, metric, bucket, count) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (day, metric, bucket)"
            " DO UPDATE SET count = stats_daily.count + excluded.count",
            [(day, metric, bucket, n) for (day, metric, bucket), n in counts.items()],
        )


def _delete_messages(
    txn: Txn,
    ids: Sequence[int],
    condition: str,
    params: tuple = (),
    broadcasts: bool = False,
) -> tuple[list[tuple], Counter]:
    """Delete messages ``ids`` still matching ``condition`` (and, for
    ``broadcasts``, their deliveries: direct messages have none); the
    deleted ``(id, to_user, received_ns, is_broadcast)`` and their roll-up."""
    among, id_params = txn.engine.in_ids("id", ids)
    deliveries = 0
    if broadcasts:
        txn.execute(
            "DELETE FROM broadcast_deliveries WHERE message_id IN"
            f" (SELECT id FROM messages WHERE {among} AND {condition})",
            (*id_params, *params),
        )
        deliveries = max(0, txn.rowcount)
    txn.execute(
        f"DELETE FROM messages WHERE {among} AND {condition}"
        " RETURNING id, to_user, received_ns, is_broadcast",
        (*id_params, *params),
    )
    rows = txn.fetchall()
    counts: Counter = Counter()
    for _, _, received_ns, bcast in rows:
        metric = "broadcast_messages" if bcast else "direct_messages"
        counts[(day_of_ns(received_ns), metric, 0)] += 1
    counts["deliveries"] = deliveries
    return rows, counts


def _finish(txn: Txn, rows: list, counts: Counter) -> dict[str, int]:
    deliveries = counts.pop("deliveries", 0)
    _add_rollups(txn, counts)
    deleted = {"messages": len(rows)}
    if deliveries:
        deleted["broadcast_deliveries"] = deliveries
    return deleted


def _delivered_txn(txn: Txn, cutoff: int, batch: int, cursor: int) -> Step:
    if not txn.engine.try_lock(txn, PRUNE_LOCK):
        return Step(busy=True, done=True)
    # From ``cursor`` (the last delivery time seen): on PostgreSQL the index
    # keeps the entries of rows deleted by earlier batches until a vacuum,
    # and starting from the bottom each time would walk all of them again.
    txn.execute(
        "SELECT id, delivered_ns FROM messages WHERE delivered_ns >= ?"
        " AND delivered_ns < ? AND is_broadcast = 0 ORDER BY delivered_ns LIMIT ?",
        (cursor, cutoff, batch),
    )
    found = txn.fetchall()
    if not found:
        return Step(done=True, cursor=cursor)
    ids = [r[0] for r in found]
    rows, counts = _delete_messages(
        txn, ids, "delivered_ns < ? AND is_broadcast = 0", (cutoff,)
    )
    return Step(
        deleted=_finish(txn, rows, counts),
        done=len(ids) < batch,
        cursor=found[-1][1],
    )


def _broadcasts_txn(txn: Txn, cutoff: int, batch: int, cursor: int) -> Step:
    """The oldest broadcasts by id; the pass ends at the first one sent
    after the cutoff (ids follow arrival)."""
    if not txn.engine.try_lock(txn, PRUNE_LOCK):
        return Step(busy=True, done=True)
    txn.execute(
        "SELECT id, received_ns FROM messages WHERE is_broadcast = 1 AND id > ?"
        " ORDER BY id LIMIT ?",
        (cursor, batch),
    )
    found = txn.fetchall()
    ids = [mid for mid, ns in found if ns is None or ns < cutoff]
    done = len(ids) < len(found) or len(found) < batch
    if not ids:
        return Step(done=True, cursor=cursor)
    rows, counts = _delete_messages(
        txn,
        ids,
        "is_broadcast = 1 AND COALESCE(received_ns, 0) < ?",
        (cutoff,),
        broadcasts=True,
    )
    return Step(deleted=_finish(txn, rows, counts), done=done, cursor=ids[-1])


def _pending_txn(txn: Txn, cutoff: int, batch: int, cursor: int) -> Step:
    """A keyset scan in id order from ``cursor``: rows below it were all
    looked at once they were old enough, and a row never becomes pending
    again, so a pass resumes where the last one stopped."""
    if not txn.engine.try_lock(txn, PRUNE_LOCK):
        return Step(busy=True, done=True, cursor=cursor)
    txn.execute(
        "SELECT id, status, is_broadcast, received_ns FROM messages WHERE id > ?"
        " ORDER BY id LIMIT ?",
        (cursor, batch),
    )
    found = txn.fetchall()
    ids = []
    done = len(found) < batch
    for mid, status, bcast, ns in found:
        if ns is not None and ns >= cutoff:
            done = True
            break
        cursor = mid
        if status == "pending" and not bcast:
            ids.append(mid)
    if not ids:
        return Step(done=done, cursor=cursor)
    rows, counts = _delete_messages(
        txn,
        ids,
        "status = 'pending' AND is_broadcast = 0 AND COALESCE(received_ns, 0) < ?",
        (cutoff,),
    )
    for _, _, received_ns, _ in rows:
        counts[(day_of_ns(received_ns), "pending_dropped", 0)] += 1
    deleted = _finish(txn, rows, counts)
    return Step(deleted=deleted, dropped=len(rows), done=done, cursor=cursor)


def _delete_events(txn: Txn, where: str, params: Sequence) -> tuple[int, Counter]:
    hour = txn.engine.utc_hour("timestamp")
    epoch = txn.engine.epoch_seconds("timestamp")
    txn.execute(
        f"DELETE FROM message_events WHERE {where} RETURNING {hour}, {epoch}", params
    )
    counts: Counter = Counter()
    rows = txn.fetchall()
    for h, seconds in rows:
        counts[(day_of_s(seconds), "message_events", -1 if h is None else int(h))] += 1
    return len(rows), counts


def _events_txn(txn: Txn, cutoff: int, batch: int, cursor: int) -> Step:
    """The oldest events by id; the pass ends at the first newer one."""
    if not txn.engine.try_lock(txn, PRUNE_LOCK):
        return Step(busy=True, done=True)
    cut_s = cutoff // _NS
    epoch = txn.engine.epoch_seconds("timestamp")
    txn.execute(
        f"SELECT id, {epoch} FROM message_events WHERE id > ? ORDER BY id LIMIT ?",
        (cursor, batch),
    )
    found = txn.fetchall()
    ids = [eid for eid, s in found if s is None or s < cut_s]
    done = len(ids) < len(found) or len(found) < batch
    if not ids:
        return Step(done=True, cursor=cursor)
    among, id_params = txn.engine.in_ids("id", ids)
    count, counts = _delete_events(
        txn, f"{among} AND ({epoch} IS NULL OR {epoch} < ?)", (*id_params, cut_s)
    )
    _add_rollups(txn, counts)
    return Step(deleted={"message_events": count}, done=done, cursor=ids[-1])


def _sessions_txn(txn: Txn, cutoff: int, batch: int, cursor: int) -> Step:
    """Ended sessions by end time (the text of dkserver's rows, all UTC,
    sorts as time; the original's rows with other offsets go up to 14 hours
    later than they could)."""
    if not txn.engine.try_lock(txn, PRUNE_LOCK):
        return Step(busy=True, done=True)
    cut_s = cutoff // _NS
    end = txn.engine.epoch_seconds("end_time")
    txn.execute(
        "SELECT session_id FROM sessions WHERE end_time IS NOT NULL"
        f" AND end_time < ? AND {end} < ? ORDER BY end_time LIMIT ?",
        (timestamps.storage_from_unix_nanos(cutoff), cut_s, batch),
    )
    ids = [r[0] for r in txn.fetchall()]
    if not ids:
        return Step(done=True)
    among, id_params = txn.engine.in_ids("session_id", ids)
    events, counts = _delete_events(txn, among, id_params)
    start = txn.engine.epoch_seconds("start_time")
    txn.execute(
        f"DELETE FROM sessions WHERE {among} AND {end} < ? RETURNING duration, {start}",
        (*id_params, cut_s),
    )
    rows = txn.fetchall()
    for duration, started in rows:
        bucket = -1 if duration is None else int(duration)
        counts[(day_of_s(started), "sessions", bucket)] += 1
    _add_rollups(txn, counts)
    deleted = {"sessions": len(rows)}
    if events:
        deleted["message_events"] = events
    return Step(deleted=deleted, done=len(ids) < batch)


_STEPS = {
    "delivered": _delivered_txn,
    "broadcasts": _broadcasts_txn,
    "pending": _pending_txn,
    "events": _events_txn,
    "sessions": _sessions_txn,
}


def _count_txn(txn: Txn, cutoffs: Cutoffs) -> dict[str, int]:
    out: dict[str, int] = {}
    if cutoffs.delivered is not None:
        txn.execute(
            "SELECT COUNT(*) FROM messages WHERE delivered_ns < ? AND is_broadcast = 0",
            (cutoffs.delivered,),
        )
        out["delivered"] = txn.fetchone()[0]
    if cutoffs.broadcasts is not None:
        old = "m.is_broadcast = 1 AND COALESCE(m.received_ns, 0) < ?"
        txn.execute(
            f"SELECT COUNT(*) FROM messages m WHERE {old}", (cutoffs.broadcasts,)
        )
        out["broadcasts"] = txn.fetchone()[0]
        txn.execute(
            "SELECT COUNT(*) FROM broadcast_deliveries d JOIN messages m"
            f" ON m.id = d.message_id WHERE {old}",
            (cutoffs.broadcasts,),
        )
        out["broadcast_deliveries"] = txn.fetchone()[0]
    if cutoffs.pending is not None:
        txn.execute(
            "SELECT COUNT(*) FROM messages WHERE status = 'pending'"
            " AND is_broadcast = 0 AND COALESCE(received_ns, 0) < ?",
            (cutoffs.pending,),
        )
        out["pending"] = txn.fetchone()[0]
    if cutoffs.rollup is not None:
        cut_s = cutoffs.rollup // _NS
        epoch = txn.engine.epoch_seconds("timestamp")
        txn.execute(
            f"SELECT COUNT(*) FROM message_events WHERE {epoch} IS NULL OR {epoch} < ?",
            (cut_s,),
        )
        out["events"] = txn.fetchone()[0]
        end = txn.engine.epoch_seconds("end_time")
        txn.execute(
            f"SELECT COUNT(*) FROM sessions WHERE end_time IS NOT NULL AND {end} < ?",
            (cut_s,),
        )
        out["sessions"] = txn.fetchone()[0]
    return out


def _rollups_txn(txn: Txn) -> list[tuple[str, str, int, int]]:
    txn.execute(
        "SELECT day, metric, bucket, count FROM stats_daily"
        " ORDER BY day, metric, bucket"
    )
    return [(d, m, int(b), int(c)) for d, m, b, c in txn.fetchall()]
