"""Copy a migrated SQLite snapshot into PostgreSQL, resumably, and verify it.

Rows go over with ``COPY``, one chunk of at most ``chunk_size`` rows per
transaction, in key order (see ``tables.py``): memory stays bounded by one
chunk, a killed run loses at most the chunk in flight (rolled back by
PostgreSQL), and the next run starts after the highest key the target holds.
That needs the target to hold nothing but a prefix of this source, which
:meth:`Port.check_target` establishes before anything is written.

Values are copied as they are: text columns are read as SQLite text (the
exact bytes, so timestamps like ``2026-11-26 01:45:42.123456789-03:00`` stay
byte for byte), integers as integers; ids are kept and the sequences are
moved past them afterwards.  The one exception is the columns dkserver
stores escaped on PostgreSQL (``engine.ESCAPED_COLUMNS``: message content,
which may hold U+0000): they are written through ``encode_content``, as the
server writes them, and read back through ``decode_content``, so every
comparison (resume check and verification) is between the source's text and
the text the server will serve.  The verification compares, per table, the
row count, the last key and a SHA-256 over every row in key order, computed
on both sides from the same column lists.

Blocking calls are fine here: this runs as a command, never in the reactor.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from dkserver.store import pg_schema
from dkserver.store.engine import ESCAPED_COLUMNS, decode_content, encode_content

from .errors import AdminError, CopyFailed, VerificationFailed
from .tables import TABLES, Table

_TEXT_TYPES = frozenset({"text", "character varying", "character"})

#: Users compared per query when checking the target.
_USER_BATCH = 500


@dataclass(frozen=True)
class Summary:
    """What the verification compares for one table on one side."""

    rows: int
    last_key: tuple | None
    digest: str


class Port:
    """One port of ``source`` (a migrated snapshot) into ``target``.

    ``target`` must be in autocommit mode: each chunk opens its own
    transaction, so committed chunks survive whatever stops the run.
    """

    def __init__(
        self,
        source: sqlite3.Connection,
        target: psycopg.Connection,
        *,
        chunk_size: int,
        out: Callable[[str], None],
        source_sequences: dict[str, int] | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.chunk_size = chunk_size
        self.out = out
        self.source_sequences = source_sequences or {}
        self.columns = {t.name: self._columns(t) for t in TABLES}
        #: Per table, the positions of the columns stored escaped.
        self.escaped = {
            t.name: [
                i
                for i, (name, _) in enumerate(self.columns[t.name])
                if name in ESCAPED_COLUMNS.get(t.name, ())
            ]
            for t in TABLES
        }

    # -- columns ---------------------------------------------------------

    def _columns(self, table: Table) -> list[tuple[str, bool]]:
        """(name, is_text) of ``table`` in PostgreSQL's order, checked against
        the snapshot: a column only one side has would be lost or invented."""
        target = [
            (name, data_type in _TEXT_TYPES)
            for name, data_type in self.target.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s"
                " ORDER BY ordinal_position",
                (table.name,),
            )
        ]
        source = {
            row[1] for row in self.source.execute(f"PRAGMA table_info({table.name})")
        }
        names = {name for name, _ in target}
        if source != names:
            only_source = sorted(source - names)
            only_target = sorted(names - source)
            raise AdminError(
                f"table {table.name} has different columns in SQLite and "
                f"PostgreSQL (only in SQLite: {', '.join(only_source) or '-'}; "
                f"only in PostgreSQL: {', '.join(only_target) or '-'})"
            )
        return target

    def _encoded(self, table: Table, row: Sequence[Any]) -> Sequence[Any]:
        """``row`` as the server stores it in PostgreSQL."""
        return _recode(row, self.escaped[table.name], encode_content)

    def _decoded(self, table: Table, row: Sequence[Any]) -> tuple:
        """A PostgreSQL ``row`` as the server reads it (the source's form)."""
        return tuple(_recode(row, self.escaped[table.name], decode_content))

    def _key_index(self, table: Table) -> list[int]:
        names = [name for name, _ in self.columns[table.name]]
        return [names.index(k) for k in table.key]

    # -- SQLite queries --------------------------------------------------

    def _source_select(self, table: Table, where: str = "", limit: bool = False) -> str:
        # CAST(... AS TEXT) makes a text column's value text even where
        # SQLite's loose typing stored, say, a number in it; for a text
        # value it is the identity, byte for byte.
        cols = ", ".join(
            f'CAST(t."{name}" AS TEXT)' if is_text else f't."{name}"'
            for name, is_text in self.columns[table.name]
        )
        order = ", ".join(f't."{k}"' for k in table.key)
        query = f"SELECT {cols} FROM {table.name} AS t WHERE ({table.portable})"
        if where:
            query += f" AND {where}"
        query += f" ORDER BY {order}"
        if limit:
            query += " LIMIT ?"
        return query

    @staticmethod
    def _sqlite_key(table: Table, op: str) -> str:
        if len(table.key) == 1:
            return f't."{table.key[0]}" {op} ?'
        keys = ", ".join(f't."{k}"' for k in table.key)
        return f"({keys}) {op} ({', '.join('?' * len(table.key))})"

    def _source_count(
        self, table: Table, where: str = "", params: Sequence = ()
    ) -> int:
        query = f"SELECT COUNT(*) FROM {table.name} AS t WHERE ({table.portable})"
        if where:
            query += f" AND {where}"
        return self.source.execute(query, tuple(params)).fetchone()[0]

    def skipped(self, table: Table) -> int:
        return self.source.execute(
            f"SELECT COUNT(*) FROM {table.name} AS t WHERE NOT ({table.portable})"
        ).fetchone()[0]

    # -- PostgreSQL queries ----------------------------------------------

    def _pg_columns(self, table: Table) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.Identifier(name) for name, _ in self.columns[table.name]
        )

    def _pg_order(self, table: Table, desc: bool = False) -> sql.Composable:
        suffix = sql.SQL(" DESC" if desc else "")
        return sql.SQL(", ").join(
            sql.Composed([sql.Identifier(k), suffix]) for k in table.key
        )

    def _target_count(self, table: Table) -> int:
        query = sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table.name))
        return self.target.execute(query).fetchone()[0]

    def _target_last(self, table: Table) -> tuple | None:
        query = sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT 1").format(
            self._pg_columns(table),
            sql.Identifier(table.name),
            self._pg_order(table, desc=True),
        )
        row = self.target.execute(query).fetchone()
        return None if row is None else self._decoded(table, row)

    # -- the port --------------------------------------------------------

    def check_target(self) -> dict[str, tuple | None]:
        """The key each table's copy resumes after; refuses foreign data.

        Every user must be the source's user, public key and all; per
        table, the target's highest row must be the source's row of that
        key, with as many rows up to it on both sides.  Anything else means the
        target is another deployment's database, or one a server has
        written to since: filling it would mix two histories.
        """
        self._check_users()
        resume: dict[str, tuple | None] = {}
        for table in TABLES:
            last = self._target_last(table)
            if last is None:
                resume[table.name] = None
                continue
            index = self._key_index(table)
            key = tuple(last[i] for i in index)
            where = self._sqlite_key(table, "=")
            row = self.source.execute(self._source_select(table, where), key).fetchone()
            if row is None or tuple(row) != tuple(last):
                self._refuse(table, f"its row {_show(key)} is not the source's")
            upto = self._source_count(table, self._sqlite_key(table, "<="), key)
            there = self._target_count(table)
            if upto != there:
                self._refuse(
                    table,
                    f"it holds {there} rows up to {_show(key)} where the source "
                    f"has {upto}",
                )
            resume[table.name] = key
        return resume

    def _check_users(self) -> None:
        users = next(t for t in TABLES if t.name == "users")
        first = sql.SQL(
            "SELECT user_id, public_key FROM users ORDER BY user_id LIMIT %s"
        )
        then = sql.SQL(
            "SELECT user_id, public_key FROM users WHERE user_id > %s"
            " ORDER BY user_id LIMIT %s"
        )
        # one IN list per batch: stay far below SQLite's variable limit
        batch = min(self.chunk_size, _USER_BATCH)
        rows = self.target.execute(first, (batch,)).fetchall()
        while rows:
            wanted = [user_id for user_id, _ in rows]
            marks = ", ".join("?" * len(wanted))
            known = dict(
                self.source.execute(
                    "SELECT CAST(user_id AS TEXT), CAST(public_key AS TEXT)"
                    f" FROM users WHERE user_id IN ({marks})",
                    wanted,
                )
            )
            for user_id, public_key in rows:
                if user_id not in known:
                    self._refuse(users, f"user {user_id!r} is not in the source")
                if known[user_id] != public_key:
                    self._refuse(users, f"user {user_id!r} has a different public key")
            rows = self.target.execute(then, (rows[-1][0], batch)).fetchall()

    def _refuse(self, table: Table, why: str) -> None:
        raise AdminError(
            f"PostgreSQL already holds other data: table {table.name}: {why}; "
            "port-db fills an empty database or resumes its own copy of this "
            "source, so give it a new, empty database"
        )

    def copy_all(self, resume: dict[str, tuple | None]) -> dict[str, int]:
        """Copy every table; returns the rows copied per table."""
        return {t.name: self.copy(t, resume.get(t.name)) for t in TABLES}

    def copy(self, table: Table, after: tuple | None) -> int:
        total = self._source_count(table)
        already = self._target_count(table)
        skipped = self.skipped(table)
        if skipped:
            self.out(
                f"{table.name}: leaving out {skipped} source rows: "
                f"{table.skipped_because} (PostgreSQL would refuse them)"
            )
        index = self._key_index(table)
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table.name), self._pg_columns(table)
        )
        copied = 0
        while True:
            if after is None:
                query, params = self._source_select(table, limit=True), ()
            else:
                where = self._sqlite_key(table, ">")
                query, params = self._source_select(table, where, limit=True), after
            rows = self.source.execute(query, (*params, self.chunk_size)).fetchall()
            if not rows:
                break
            try:
                with self.target.transaction(), self.target.cursor() as cur:
                    with cur.copy(copy_sql) as copy:
                        for row in rows:
                            copy.write_row(self._encoded(table, row))
            except psycopg.Error as e:
                raise CopyFailed(
                    f"copying {table.name} stopped after {copied} new rows "
                    f"(at the chunk after {_show(after)}): {_pg_message(e)}; the "
                    "rows committed so far stay, and running port-db again "
                    "resumes from them"
                ) from e
            copied += len(rows)
            after = tuple(rows[-1][i] for i in index)
            if len(rows) < self.chunk_size:
                break
        self.out(
            f"{table.name}: {total} rows to copy, {already} already in PostgreSQL,"
            f" {copied} copied"
        )
        return copied

    def reset_sequences(self) -> dict[str, int]:
        """Move each id sequence past both the highest id copied and the
        highest SQLite ever handed out, so no id is ever reused."""
        next_ids = pg_schema.reset_sequences(self.target, self.source_sequences)
        self.out(
            "sequences: next id "
            + ", ".join(f"{name} {n}" for name, n in next_ids.items())
        )
        return next_ids

    def verify(self) -> None:
        """Compare count, last key and row checksum of every table."""
        failures = []
        for table in TABLES:
            source = self._summarize(table, self._source_rows(table))
            with self.target.transaction():
                target = self._summarize(table, self._target_rows(table))
            if source == target:
                self.out(
                    f"verify {table.name}: {source.rows} rows, last key "
                    f"{_show(source.last_key)}, checksum {source.digest[:16]}: equal"
                )
                continue
            detail = (
                f"source {source.rows} rows, last key {_show(source.last_key)}; "
                f"PostgreSQL {target.rows} rows, last key {_show(target.last_key)}"
            )
            if source.digest != target.digest:
                detail += "; checksums differ"
            line = f"verify {table.name}: MISMATCH: {detail}"
            self.out(line)
            failures.append(table.name)
        if failures:
            raise VerificationFailed(
                f"verification failed for {', '.join(failures)}: PostgreSQL does "
                "not hold the same rows as the source (see the lines above)"
            )

    def _source_rows(self, table: Table) -> Iterable[tuple]:
        return self.source.execute(self._source_select(table))

    def _target_rows(self, table: Table) -> Iterable[tuple]:
        query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
            self._pg_columns(table), sql.Identifier(table.name), self._pg_order(table)
        )
        cur = self.target.cursor(name=f"port_db_verify_{table.name}")
        cur.itersize = self.chunk_size
        cur.execute(query)
        try:
            for row in cur:
                yield self._decoded(table, row)
        finally:
            cur.close()

    def _summarize(self, table: Table, rows: Iterable[tuple]) -> Summary:
        index = self._key_index(table)
        digest = hashlib.sha256()
        count = 0
        last = None
        for row in rows:
            digest.update(_row_bytes(row))
            count += 1
            last = row
        last_key = None if last is None else tuple(last[i] for i in index)
        return Summary(rows=count, last_key=last_key, digest=digest.hexdigest())


def _recode(
    row: Sequence[Any], positions: Sequence[int], recode: Callable[[str], str]
) -> Sequence[Any]:
    """``row`` with ``recode`` applied to the text at ``positions``."""
    if not positions:
        return row
    out = list(row)
    for i in positions:
        if isinstance(out[i], str):
            out[i] = recode(out[i])
    return out


def _row_bytes(row: Sequence[Any]) -> bytes:
    """One row, unambiguously: type, length and value of every field."""
    parts = []
    for value in row:
        if value is None:
            parts.append(b"N")
        elif isinstance(value, int):
            parts.append(b"I%d" % value)
        else:
            data = str(value).encode("utf-8", "surrogatepass")
            parts.append(b"%s%d:%s" % (type(value).__name__.encode(), len(data), data))
    return b"\x1f".join(parts) + b"\x1e"


def _show(key: tuple | None) -> str:
    if key is None:
        return "-"
    return ", ".join(str(k) for k in key)


def _pg_message(e: psycopg.Error) -> str:
    diag = getattr(e, "diag", None)
    primary = getattr(diag, "message_primary", None)
    text = primary or str(e) or type(e).__name__
    return text.strip().splitlines()[0]
