"""Sessions and message events, and the usage statistics computed from them.

Times are written as the original server writes them,
``YYYY-MM-DD HH:MM:SS.fffffffff+00:00``. Rows the original wrote may carry
another UTC offset and fewer fraction digits (Go trims trailing zeros), so
text comparison is not reliable; the statistics filter with the database's
own date functions (the engine's ``epoch_seconds``), which accept both forms,
apply the offset, and read a zone-less value as UTC. That is a table scan at
second precision, which is fine for an occasional statistics request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dkserver import timestamps
from dkserver.store.database import Database, Txn

_DAY_S = 86_400
_NS = 1_000_000_000


class AnalyticsStore:
    def __init__(self, pool: Database, *, reads: Database | None = None) -> None:
        self._pool = pool
        #: `stats` scans whole tables: on the read pool, beside the writer.
        self._reads = pool if reads is None else reads

    async def start_session(
        self, session_id: str, user_id: str, start_ns: int, node_id: str | None = None
    ) -> None:
        await self._pool.runInteraction(
            _start_session_txn,
            session_id,
            user_id,
            timestamps.storage_from_unix_nanos(start_ns),
            node_id,
        )

    async def end_session(self, session_id: str, end_ns: int) -> None:
        """Close the session (no-op if unknown or already closed)."""
        await self._pool.runInteraction(_end_sessions_txn, session_id, end_ns)

    async def end_open_sessions(
        self,
        end_ns: int,
        started_before_ns: int | None = None,
        node_id: str | None = None,
    ) -> int:
        """Close sessions left open (shutdown, or a crash before); count.

        With ``started_before_ns``, only those that started earlier: at startup
        the listeners are already up, and a session opened meanwhile is live.
        With ``node_id`` (one node of a cluster), only that node's sessions and
        those without a node (written before schema version 6, by a process
        that cannot still be writing: older versions refuse a newer schema);
        without, every session (a single process holds them all).
        """
        return await self._pool.runInteraction(
            _end_sessions_txn, None, end_ns, started_before_ns, node_id
        )

    async def end_node_sessions(self, node_id: str, end_ns: int) -> int:
        """Close the open sessions of ``node_id`` (a node declared dead); count.

        Idempotent and safe to run on several survivors at once: a session
        already closed, by its node or by another survivor, is left alone.
        """
        return await self._pool.runInteraction(
            _end_sessions_txn, None, end_ns, node_id=node_id, with_unowned=False
        )

    async def record_message_events(
        self, rows: Sequence[tuple[str, str, bool, int]]
    ) -> None:
        """Store ``(session_id, user_id, is_broadcast, ts_ns)`` events at once.

        Each session must have been started (foreign key to ``sessions``).
        """
        if rows:
            values = [
                (sid, uid, int(bcast), timestamps.storage_from_unix_nanos(ns))
                for sid, uid, bcast, ns in rows
            ]
            await self._pool.runInteraction(_record_events_txn, values)

    async def stats(self, now_ns: int) -> dict[str, Any]:
        """Usage statistics as of ``now_ns``.

        Active users are those with a session overlapping the window; message
        counts come from ``messages`` (by server receive time); the peak hour
        is the UTC hour with the most message events ever, ``None`` if none.
        """
        return await self._reads.runInteraction(_stats_txn, now_ns // _NS)


#: The columns a new session row is written with.
SESSION_COLUMNS = ("session_id", "user_id", "start_time", "node_id")


def _start_session_txn(
    txn: Txn, session_id: str, user_id: str, start: str, node_id: str | None
) -> None:
    txn.execute(
        "INSERT INTO sessions (session_id, user_id, start_time, node_id)"
        " VALUES (?, ?, ?, ?)",
        (session_id, user_id, start, node_id),
    )


def _end_sessions_txn(
    txn: Txn,
    session_id: str | None,
    end_ns: int,
    started_before_ns: int | None = None,
    node_id: str | None = None,
    with_unowned: bool = True,
) -> int:
    """Close one session, or the open ones (of ``node_id``, plus those with
    no node when ``with_unowned``); returns how many were closed."""
    query = "SELECT session_id, start_time FROM sessions WHERE end_time IS NULL"
    params: tuple = ()
    if session_id is not None:
        query += " AND session_id = ?"
        params = (session_id,)
    elif node_id is not None:
        mine = "node_id = ?"
        query += f" AND ({mine} OR node_id IS NULL)" if with_unowned else f" AND {mine}"
        params = (node_id,)
    txn.execute(query, params)
    updates = []
    for sid, start in txn.fetchall():
        try:
            start_ns = timestamps.parse(start, allow_naive=True).unix_nanos
        except timestamps.TimestampError:
            duration = None
        else:
            if started_before_ns is not None and start_ns >= started_before_ns:
                continue  # opened after this process started: live
            # whole seconds, truncated, as the original's int(d.Seconds())
            duration = max(0, (end_ns - start_ns) // _NS)
        updates.append((timestamps.storage_from_unix_nanos(end_ns), duration, sid))
    if not updates:
        return 0
    # "still open" again: another node may have closed it since the SELECT
    # (PostgreSQL re-checks the condition after waiting for that node's lock),
    # and only what this transaction closed counts.
    txn.executemany(
        "UPDATE sessions SET end_time = ?, duration = ?"
        " WHERE session_id = ? AND end_time IS NULL",
        updates,
    )
    return txn.rowcount


def _record_events_txn(txn: Txn, values: list[tuple[str, str, int, str]]) -> None:
    txn.executemany(
        "INSERT INTO message_events (session_id, user_id, is_broadcast, timestamp)"
        " VALUES (?, ?, ?, ?)",
        values,
    )


def _stats_txn(txn: Txn, now_s: int) -> dict[str, Any]:
    return {
        "daily_active_users": _active_users(txn, now_s - _DAY_S, now_s),
        "weekly_active_users": _active_users(txn, now_s - 7 * _DAY_S, now_s),
        "messages": {
            "all_time": _message_counts(txn, None, now_s),
            "last_24h": _message_counts(txn, now_s - _DAY_S, now_s),
        },
        "sessions": _session_stats(txn),
        "peak_hour": _peak_hour(txn),
    }


def _active_users(txn: Txn, since_s: int, now_s: int) -> int:
    start = txn.engine.epoch_seconds("start_time")
    end = txn.engine.epoch_seconds("end_time")
    txn.execute(
        f"SELECT COUNT(DISTINCT user_id) FROM sessions WHERE {start} <= ?"
        f" AND (end_time IS NULL OR {end} >= ?)",
        (now_s, since_s),
    )
    return txn.fetchone()[0]


def _message_counts(txn: Txn, since_s: int | None, now_s: int) -> dict[str, int]:
    if since_s is None:
        # what is stored, plus what retention deleted (stats_daily)
        txn.execute(
            "SELECT (SELECT COUNT(*) FROM messages)"
            " + (SELECT COALESCE(SUM(count), 0) FROM stats_daily"
            "    WHERE metric IN ('direct_messages', 'broadcast_messages')),"
            " (SELECT COUNT(*) FROM messages WHERE is_broadcast = 1)"
            " + (SELECT COALESCE(SUM(count), 0) FROM stats_daily"
            "    WHERE metric = 'broadcast_messages')"
        )
        total, broadcast = (int(v) for v in txn.fetchone())
    else:
        txn.execute(
            "SELECT COUNT(*),"
            " CAST(COALESCE(SUM(CASE WHEN is_broadcast = 1 THEN 1 END), 0) AS BIGINT)"
            " FROM messages"
            " WHERE received_ns >= ? AND received_ns < ?",
            (since_s * _NS, (now_s + 1) * _NS),
        )
        total, broadcast = txn.fetchone()
    return {"direct": total - broadcast, "broadcast": broadcast, "total": total}


def _session_stats(txn: Txn) -> dict[str, Any]:
    """Over the stored sessions and those retention rolled up (durations
    kept as a histogram in stats_daily, so the median stays exact)."""
    txn.execute(
        "SELECT COUNT(*), COUNT(duration),"
        " CAST(SUM(CASE WHEN end_time IS NULL THEN 1 ELSE 0 END) AS BIGINT),"
        " SUM(duration), MAX(duration) FROM sessions"
    )
    count, completed, still_open, total, longest = txn.fetchone()
    txn.execute(
        "SELECT COALESCE(SUM(count), 0),"
        " COALESCE(SUM(CASE WHEN bucket >= 0 THEN count ELSE 0 END), 0),"
        " COALESCE(SUM(CASE WHEN bucket >= 0 THEN bucket * count ELSE 0 END), 0),"
        " MAX(CASE WHEN bucket >= 0 THEN bucket END)"
        " FROM stats_daily WHERE metric = 'sessions'"
    )
    old_count, old_completed, old_total, old_longest = txn.fetchone()
    count += int(old_count)
    completed += int(old_completed)
    total = int(total or 0) + int(old_total)
    if old_longest is not None:
        longest = int(old_longest) if longest is None else max(longest, old_longest)
    median = None
    if completed and not old_completed:
        txn.execute(
            "SELECT duration FROM sessions WHERE duration IS NOT NULL"
            " ORDER BY duration LIMIT 1 OFFSET ?",
            ((completed - 1) // 2,),
        )
        median = txn.fetchone()[0]
    elif completed:
        txn.execute(
            "SELECT d, SUM(n) FROM (SELECT duration AS d, COUNT(*) AS n"
            " FROM sessions WHERE duration IS NOT NULL GROUP BY duration"
            " UNION ALL SELECT bucket, count FROM stats_daily"
            " WHERE metric = 'sessions' AND bucket >= 0) AS u GROUP BY d ORDER BY d"
        )
        rank = (completed - 1) // 2
        for duration, n in txn.fetchall():
            rank -= int(n)
            if rank < 0:
                median = int(duration)
                break
    return {
        "count": count,
        "open": still_open or 0,
        "avg_duration_s": total / completed if completed else None,
        "max_duration_s": None if longest is None else int(longest),
        "p50_duration_s": median,
    }


def _peak_hour(txn: Txn) -> int | None:
    hour = txn.engine.utc_hour("timestamp")
    txn.execute(
        f"SELECT hour, SUM(n) AS total FROM (SELECT {hour} AS hour, 1 AS n"
        " FROM message_events UNION ALL SELECT bucket, count FROM stats_daily"
        " WHERE metric = 'message_events' AND bucket >= 0) AS e"
        " WHERE hour IS NOT NULL GROUP BY hour ORDER BY total DESC, hour LIMIT 1"
    )
    row = txn.fetchone()
    return None if row is None else row[0]
