"""The pool the stores use: an adbapi pool plus the engine of its backend.

As Synapse's ``DatabasePool``/``LoggingTransaction``: each store hands a
synchronous ``_txn(txn, ...)`` function to :meth:`Database.runInteraction`;
``txn`` speaks the stores' SQL (``?`` placeholders) on either backend and
turns driver exceptions into dkserver's own (`IntegrityError` for a violated
constraint, `StoreError` for the rest), so nothing above the store modules
ever sees ``sqlite3`` or ``psycopg``.  The cost is one wrapper object per
transaction and one dictionary lookup per statement; the group writer runs a
handful of statements per batch, not per message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from dkserver.store.engine import Engine
from dkserver.store.errors import (
    IntegrityError,
    NulNotStorable,
    StoreError,
    StoreUnavailable,
)

R = TypeVar("R")


class Txn:
    """A transaction's cursor, speaking the stores' SQL on ``engine``."""

    __slots__ = ("_cursor", "engine")

    def __init__(self, cursor: Any, engine: Engine) -> None:
        self._cursor = cursor
        self.engine = engine

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._translated():
            self._cursor.execute(self.engine.sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return  # psycopg refuses an empty executemany batch less kindly
        with self._translated():
            self._cursor.executemany(self.engine.sql(sql), rows)

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed (summed over an ``executemany``)."""
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    @contextmanager
    def copy(self, statement: str) -> Iterator[Any]:
        """PostgreSQL ``COPY … FROM STDIN`` (psycopg's ``Copy``); a violated
        constraint surfaces when it ends, as `IntegrityError` too."""
        with self._translated(), self._cursor.copy(statement) as copy:
            yield copy

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except self.engine.integrity_errors as e:
            raise IntegrityError(str(e).strip()) from e
        except self.engine.driver_errors as e:
            raise driver_error(self.engine, e) from e


class Database:
    def __init__(self, pool: adbapi.ConnectionPool, engine: Engine) -> None:
        self.pool = pool
        self.engine = engine

    def runInteraction(
        self, func: Callable[..., R], *args: Any, **kwargs: Any
    ) -> Deferred:
        """Run ``func(txn, *args, **kwargs)`` in one transaction on the pool's
        thread; the Deferred fires with its result (commit) or its error
        (rollback)."""
        return self.pool.runInteraction(_interaction, self.engine, func, args, kwargs)

    @property
    def connections(self) -> int:
        """How many connections the pool may open (one for SQLite's writer)."""
        return self.pool.max

    def close(self) -> None:
        self.pool.close()


class ReadDatabase(Database):
    """The read pool, used once the schema is migrated.

    Until `open` is called (by `Store.migrate`), reads run on the writer's
    pool instead: the read connections must not see a database whose tables
    are still being created, and the writer's pool serializes them after
    the migration.
    """

    def __init__(
        self, pool: adbapi.ConnectionPool, engine: Engine, until_open: Database
    ) -> None:
        super().__init__(pool, engine)
        self._until_open: Database | None = until_open

    def open(self) -> None:
        self._until_open = None

    def runInteraction(
        self, func: Callable[..., R], *args: Any, **kwargs: Any
    ) -> Deferred:
        if self._until_open is not None:
            return self._until_open.runInteraction(func, *args, **kwargs)
        return super().runInteraction(func, *args, **kwargs)


def _interaction(
    cursor: Any, engine: Engine, func: Callable[..., R], args: tuple, kwargs: dict
) -> R:
    return func(Txn(cursor, engine), *args, **kwargs)


def driver_error(engine: Engine, e: BaseException) -> StoreError:
    """dkserver's error for a driver exception other than a constraint:
    `StoreUnavailable` (with its cause) when the database cannot be written
    now but may be later, so callers answer 503 / "resend" and retry."""
    if "NUL (0x00)" in str(e):
        return NulNotStorable()
    cause = engine.unwritable_cause(e)
    if cause is not None:
        return StoreUnavailable(" ".join(str(e).split()), cause=cause)
    return StoreError(f"database error: {str(e).strip()}")
