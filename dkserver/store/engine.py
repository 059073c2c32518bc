"""What differs between SQLite and PostgreSQL, in one object per backend.

As Synapse's ``storage/engines``: the store modules write their SQL once,
with ``?`` placeholders and the syntax both backends share (``ON CONFLICT
… DO NOTHING``, ``IS DISTINCT FROM``, ``CASE`` rather than boolean sums), and
ask the engine only for what cannot be shared: the parameter style, "no
limit", reading a stored time as an instant, assigning message ids and
bulk-inserting them, and which driver exceptions mean a constraint failed.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any

import psycopg

from dkserver.store import errors

#: ``pg_advisory_xact_lock`` key held by every transaction that inserts
#: messages (see `PostgresEngine.next_message_ids`).
MESSAGE_ID_LOCK = 0x6B64_6D73_6769_6473

#: Marks message content stored escaped on PostgreSQL (see `encode_content`):
#: U+FFFF, a noncharacter, which content rarely starts with.
ESCAPED = "\uffff"


def encode_content(text: str) -> str:
    """PostgreSQL text cannot hold U+0000, which clients may send (SQLite and
    the original keep it).  Content with a NUL, or starting with the marker,
    is stored as the marker plus the text with U+FFFF doubled and U+0000 as
    U+FFFF "0"; all other content is stored exactly as sent."""
    if "\0" not in text and not text.startswith(ESCAPED):
        return text
    return ESCAPED + text.replace(ESCAPED, ESCAPED * 2).replace("\0", ESCAPED + "0")


#: The free-text columns PostgreSQL stores through `encode_content`, per
#: table (the engines' `store_text`; messages.py escapes content itself, on
#: its hot path): what a copy into PostgreSQL (``port-db``) must encode and a
#: reader decode.  Names refuse control characters and documents are JSON,
#: which escapes U+0000, so neither needs it.
ESCAPED_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("content",),
    "user_trackers": ("tracker_description", "tracker_version"),
    "user_apis": ("policy",),
}


def decode_content(stored: str) -> str:
    if not stored.startswith(ESCAPED):
        return stored
    out, i, body = [], 0, stored[1:]
    while i < len(body):
        ch = body[i]
        if ch == ESCAPED and i + 1 < len(body):
            out.append("\0" if body[i + 1] == "0" else ESCAPED)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


#: SQLite primary result codes (the low byte of ``sqlite_errorcode``) that
#: mean the database cannot be written now but may be later, and why.
_SQLITE_UNWRITABLE = {
    3: errors.PERMISSION_DENIED,  # SQLITE_PERM
    5: errors.LOCKED,  # SQLITE_BUSY: another process holds the lock
    6: errors.LOCKED,  # SQLITE_LOCKED
    8: errors.READ_ONLY,  # SQLITE_READONLY
    10: errors.IO_ERROR,  # SQLITE_IOERR (EROFS, EPERM, EIO: see pool.py)
    13: errors.DISK_FULL,  # SQLITE_FULL: ENOSPC
    14: errors.UNAVAILABLE,  # SQLITE_CANTOPEN
}

#: PostgreSQL SQLSTATEs (exact, then by class) with the same meaning.
_PG_UNWRITABLE = {
    "53100": errors.DISK_FULL,  # disk_full
    "42501": errors.PERMISSION_DENIED,  # insufficient_privilege (REVOKE)
    "25006": errors.READ_ONLY,  # read_only_sql_transaction (a standby, or
    # default_transaction_read_only)
    "55P03": errors.LOCKED,  # lock_not_available
    "58030": errors.IO_ERROR,  # io_error
    "57014": errors.UNAVAILABLE,  # query_canceled: the statement timeout
}
_PG_UNWRITABLE_CLASSES = {
    "08": errors.UNAVAILABLE,  # connection exceptions
    "53": errors.UNAVAILABLE,  # insufficient resources (memory, connections)
    "57": errors.UNAVAILABLE,  # operator intervention: shutting down, starting
}


#: At and above this many rows a batch goes in with ``COPY``, below with one
#: multi-row ``INSERT … VALUES`` (bench/pg_write.py measured the crossover).
COPY_THRESHOLD = 16


#: Rows per SQLite statement, largest first: a handful of sizes keeps the
#: connection's statement cache hit (each size is its own SQL text).
_SQLITE_CHUNK_SIZES = (64, 16, 4, 1)
#: SQLite before 3.32 allows 999 parameters per statement.
_SQLITE_MAX_PARAMS = 999


def sqlite_chunks(count: int, params_per_row: int) -> list[tuple[int, int]]:
    """``(start, size)`` of the statements that cover ``count`` rows, sizes
    from `_SQLITE_CHUNK_SIZES` within the parameter limit: 37 rows are
    16 + 16 + 4 + 1, four statements instead of 37 steps."""
    sizes = [
        s for s in _SQLITE_CHUNK_SIZES if s * params_per_row <= _SQLITE_MAX_PARAMS
    ] or [1]
    out = []
    start = 0
    for size in sizes:
        while count - start >= size:
            out.append((start, size))
            start += size
    return out


def _in_chunks(txn: Any, statement: str, rows: Sequence[tuple]) -> None:
    """Run ``statement`` over ``rows`` in `sqlite_chunks`, its ``{}`` the
    chunk's ``VALUES`` list: one statement text per chunk size, which
    SQLite's statement cache keeps prepared."""
    if not rows:
        return
    width = len(rows[0])
    one = "(" + ", ".join("?" * width) + ")"
    for start, size in sqlite_chunks(len(rows), width):
        txn.execute(
            statement.format(", ".join([one] * size)),
            [value for row in rows[start : start + size] for value in row],
        )


class Sqlite3Engine:
    name = "sqlite"
    #: Seconds between full counts of the pending messages (the metrics'
    #: backlog gauge), or None: counted once at start, then kept by the
    #: writer.  A count scans the messages on the one connection every
    #: commit waits for, and one process is the only writer, so its own
    #: counts stay exact.
    pending_recount_interval: float | None = None
    #: Driver exceptions for a violated constraint.
    integrity_errors: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)
    #: Every other error the driver raises.
    driver_errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    #: The LIMIT value that means none.
    no_limit: int | None = -1
    #: Whether text containing U+0000 cannot be stored.
    refuses_nul = False

    def sql(self, text: str) -> str:
        return text

    def unwritable_cause(self, e: BaseException) -> str | None:
        """Why ``e`` says the database cannot be written now (disk full,
        read-only, locked, …: see dkserver.store.errors), or None when it
        is another failure (a bug, a corrupt file) that a retry won't fix."""
        code = getattr(e, "sqlite_errorcode", None)
        return None if code is None else _SQLITE_UNWRITABLE.get(code & 0xFF)

    def store_text(self, text: str) -> str:
        """Free text as this backend stores it (SQLite: as it is)."""
        return text

    def can_hold(self, key: str) -> bool:
        """Whether a key column may hold ``key``; a lookup of one it cannot
        finds nothing (rather than failing)."""
        return True

    def read_text(self, stored: Any) -> Any:
        """Stored free text as it was written (see `store_text`)."""
        return stored

    def epoch_seconds(self, column: str) -> str:
        """SQL: the stored time text in ``column`` as Unix seconds, NULL if
        unreadable.  SQLite's date functions read the original's offsets,
        fewer fraction digits and zone-less (UTC) values alike."""
        return f"CAST(strftime('%s', {column}) AS INTEGER)"

    def utc_hour(self, column: str) -> str:
        """SQL: the UTC hour (0-23) of the stored time in ``column``, or NULL."""
        return f"CAST(strftime('%H', {column}) AS INTEGER)"

    def database_size(self, txn: Any) -> int:
        """Bytes the database takes: the main file and its WAL."""
        txn.execute("PRAGMA database_list")
        path = next((row[2] for row in txn.fetchall() if row[1] == "main"), "")
        if not path:
            return 0  # in memory
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(path + suffix).st_size
            except OSError:
                pass  # no WAL yet (or just checkpointed away)
        return total

    def next_message_ids(self, txn: Any, count: int) -> list[int]:
        """Ids for ``count`` new messages, in order.

        After the table's AUTOINCREMENT sequence: the pool's single
        connection is the only writer, so no other insert can take them, and
        explicit ids keep ``sqlite_sequence`` up to date.
        """
        txn.execute(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence"
            " WHERE name = 'messages'), 0), COALESCE((SELECT MAX(id) FROM messages),"
            " 0))"
        )
        first = txn.fetchone()[0] + 1
        return list(range(first, first + count))

    def insert_rows(
        self, txn: Any, table: str, columns: Sequence[str], rows: Sequence[tuple]
    ) -> None:
        """Insert ``rows`` with multi-row ``INSERT … VALUES`` statements of a
        few fixed sizes (`sqlite_chunks`), not one ``executemany`` step per
        row: each step releases the GIL and must win it back from a busy
        reactor, so a batch of N rows cost N hand-offs."""
        names = ", ".join(columns)
        _in_chunks(txn, f"INSERT INTO {table} ({names}) VALUES {{}}", rows)

    def insert_new_rows(
        self,
        txn: Any,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple],
        parent: tuple[str, str] | None = None,
    ) -> None:
        """Insert the ``rows`` whose key is free, skipping the others; with
        ``parent=(column, table)``, also those whose ``column`` names no row
        of that table by ``id``.  Multi-row statements, as `insert_rows`:
        ``INSERT … SELECT`` over a ``VALUES`` list, which SQLite names
        ``column1``, ``column2``…"""
        names = ", ".join(columns)
        aliases = ", ".join(f"column{i} AS {c}" for i, c in enumerate(columns, 1))
        where = "true"
        if parent is not None:
            column, parent_table = parent
            where = f"EXISTS (SELECT 1 FROM {parent_table} p WHERE p.id = v.{column})"
        _in_chunks(
            txn,
            f"INSERT INTO {table} ({names}) SELECT {names} FROM (SELECT {aliases}"
            f" FROM (VALUES {{}})) AS v WHERE {where} ON CONFLICT DO NOTHING",
            rows,
        )

    def for_ids(
        self, txn: Any, statement: str, ids: Sequence[int], params: tuple = ()
    ) -> int:
        """Run ``statement`` for every id in ``ids``; the rows it changed.
        Its ``{id}`` is the test ``id`` matches (SQLite: ``id IN (…)`` lists
        of a few fixed sizes, one step each rather than one per id, as in
        `insert_rows`); ``params`` fill the placeholders before it."""
        changed = 0
        for start, size in sqlite_chunks(len(ids), len(params) + 1):
            marks = ", ".join("?" * size)
            txn.execute(
                statement.format(id=f"id IN ({marks})"),
                (*params, *ids[start : start + size]),
            )
            changed += max(0, txn.rowcount)
        return changed

    def in_ids(self, column: str, ids: Sequence[Any]) -> tuple[str, list[Any]]:
        """SQL ``column`` is one of ``ids`` and its parameters (SQLite: an
        ``IN`` list)."""
        return f"{column} IN ({','.join('?' * len(ids))})", list(ids)

    def try_lock(self, txn: Any, key: int) -> bool:
        """Take a lock until the transaction ends, if free (SQLite: one
        writer at a time already, so always)."""
        return True

    def octet_length(self, column: str) -> str:
        """SQL: the UTF-8 size in bytes of a text column."""
        return f"LENGTH(CAST({column} AS BLOB))"


class PostgresEngine:
    name = "postgresql"
    #: Several nodes write: each recounts now and then (through the pool,
    #: beside the writer's connection) rather than trust its own counts.
    pending_recount_interval: float | None = 60.0
    integrity_errors: tuple[type[BaseException], ...] = (psycopg.IntegrityError,)
    driver_errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    no_limit: int | None = None  # LIMIT NULL is LIMIT ALL
    #: PostgreSQL text cannot hold U+0000 (SQLite's can).
    refuses_nul = True

    def __init__(self) -> None:
        self._converted: dict[str, str] = {}

    def unwritable_cause(self, e: BaseException) -> str | None:
        """As `Sqlite3Engine.unwritable_cause`, from the SQLSTATE."""
        state = getattr(e, "sqlstate", None)
        if not state:
            return None
        return _PG_UNWRITABLE.get(state) or _PG_UNWRITABLE_CLASSES.get(state[:2])

    def sql(self, text: str) -> str:
        """``?`` placeholders become psycopg's ``%s`` (a literal ``%`` doubles).

        Converted once per distinct statement; the stores' SQL has no ``?``
        or ``%`` inside string literals.
        """
        converted = self._converted.get(text)
        if converted is None:
            converted = text.replace("%", "%%").replace("?", "%s")
            if len(self._converted) < 10_000:  # bounded: IN lists vary in length
                self._converted[text] = converted
        return converted

    def store_text(self, text: str) -> str:
        """Free text escaped where it holds U+0000 (see `encode_content`)."""
        return encode_content(text)

    def can_hold(self, key: str) -> bool:
        return "\0" not in key  # PostgreSQL would refuse the parameter

    def read_text(self, stored: Any) -> Any:
        return decode_content(stored) if isinstance(stored, str) else stored

    def epoch_seconds(self, column: str) -> str:
        # Only text shaped like a time is cast (a cast error would abort the
        # transaction); the session runs in UTC, so a zone-less value is UTC
        # as on SQLite.  Nanoseconds round to microseconds, then floor.
        return (
            f"CASE WHEN {column} ~ '^\\d{{4}}-\\d\\d-\\d\\d[ T]\\d\\d:\\d\\d:\\d\\d'"
            f" THEN CAST(floor(extract(epoch FROM CAST({column} AS timestamptz)))"
            " AS BIGINT) END"
        )

    def utc_hour(self, column: str) -> str:
        return (
            f"CASE WHEN {column} ~ '^\\d{{4}}-\\d\\d-\\d\\d[ T]\\d\\d:\\d\\d:\\d\\d'"
            f" THEN CAST(extract(hour FROM CAST({column} AS timestamptz)"
            " AT TIME ZONE 'UTC') AS INTEGER) END"
        )

    def database_size(self, txn: Any) -> int:
        txn.execute("SELECT pg_database_size(current_database())")
        return int(txn.fetchone()[0])

    def next_message_ids(self, txn: Any, count: int) -> list[int]:
        """Ids for ``count`` new messages, in arrival order.

        Several connections (and later several nodes) may insert messages;
        the transaction-scoped advisory lock makes them take ids and commit
        one after the other, so a reader that sees id N sees every message
        below N (what the broadcast floor relies on, as on SQLite).
        """
        # One statement, one round trip: the subquery (kept apart by OFFSET 0)
        # takes the lock before the outer row draws the ids; the ids are one
        # block, reserved with a single setval instead of a nextval per row
        # (a function call and a sequence update each).  Nothing draws from
        # this sequence without the lock.
        txn.execute(
            "SELECT setval(s.seq, nextval(s.seq) + ? - 1) FROM"
            " (SELECT pg_get_serial_sequence('messages', 'id') AS seq,"
            " pg_advisory_xact_lock(?) AS locked OFFSET 0) AS s",
            (count, MESSAGE_ID_LOCK),
        )
        last = txn.fetchone()[0]
        return list(range(last - count + 1, last + 1))

    def insert_rows(
        self, txn: Any, table: str, columns: Sequence[str], rows: Sequence[tuple]
    ) -> None:
        """One ``COPY`` for a large batch, one multi-row ``INSERT`` below."""
        names = ", ".join(columns)
        if len(rows) >= COPY_THRESHOLD:
            with txn.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        one = "(" + ", ".join("?" * len(columns)) + ")"
        txn.execute(
            f"INSERT INTO {table} ({names}) VALUES {', '.join([one] * len(rows))}",
            [value for row in rows for value in row],
        )

    def insert_new_rows(
        self,
        txn: Any,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple],
        parent: tuple[str, str] | None = None,
    ) -> None:
        """As `Sqlite3Engine.insert_new_rows`, one statement per row, which
        psycopg's ``executemany`` sends in one pipeline (the statements
        PostgreSQL ran before these were batched on SQLite)."""
        names = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        if parent is None:
            txn.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({marks})"
                " ON CONFLICT DO NOTHING",
                rows,
            )
            return
        column, parent_table = parent
        at = list(columns).index(column)
        txn.executemany(
            f"INSERT INTO {table} ({names}) SELECT {marks} WHERE EXISTS"
            f" (SELECT 1 FROM {parent_table} WHERE id = ?) ON CONFLICT DO NOTHING",
            [(*row, row[at]) for row in rows],
        )

    def for_ids(
        self, txn: Any, statement: str, ids: Sequence[int], params: tuple = ()
    ) -> int:
        """One statement with ``id = ANY(?)``; the rows it changed.  A
        statement per id (what ``executemany`` sends) costs the server a
        parse/bind/execute each, most of a delivered mark's cost."""
        txn.execute(
            statement.format(id="id = ANY(CAST(? AS BIGINT[]))"), (*params, list(ids))
        )
        return max(0, txn.rowcount)

    def in_ids(self, column: str, ids: Sequence[Any]) -> tuple[str, list[Any]]:
        """One array parameter: a statement with hundreds of parameters
        costs PostgreSQL more to parse and plan than to run."""
        kind = "BIGINT" if ids and isinstance(ids[0], int) else "TEXT"
        return f"{column} = ANY(CAST(? AS {kind}[]))", [list(ids)]

    def try_lock(self, txn: Any, key: int) -> bool:
        """``pg_try_advisory_xact_lock``: held until the transaction ends,
        by one transaction of all the nodes sharing the database."""
        txn.execute("SELECT pg_try_advisory_xact_lock(?)", (key,))
        return bool(txn.fetchone()[0])

    def octet_length(self, column: str) -> str:
        return f"octet_length({column})"


Engine = Sqlite3Engine | PostgresEngine
