"""The connection pools: one SQLite connection, or a PostgreSQL pool; and
beside either, a pool for reads.

SQLite allows a single writer, so the pool holds exactly one connection on one
thread (``cp_min = cp_max = 1``): every transaction is serialized there and
never blocks the reactor.

Reads that the public REST endpoints make (users, profiles, trackers,
statistics) go to a read pool of their own (`open_read_pool`,
`open_pg_read_pool`): a burst of them cannot queue in front of the group
writer's commit, and a commit (or a lock held by another process) cannot hold
them up.  In WAL mode a SQLite reader sees the last commit and never waits
for a writer; on PostgreSQL the read connections are extra connections,
read-only, so the writer's pool keeps all of its own.  A read that starts
after a commit's Deferred fired sees that commit (read-your-writes across
the two pools).

Durability: the database runs in WAL mode. With ``synchronous=NORMAL`` a
committed transaction survives a crash of the dkserver process (the WAL is in
the OS page cache) and the file can never be corrupted; only a power cut or
kernel crash may lose the last few transactions, because the WAL is fsynced at
checkpoints rather than at every commit. ``FULL`` fsyncs the WAL on every
commit as well, so nothing committed is ever lost, at the cost of one fsync per
transaction (group commit keeps that affordable).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.enterprise import adbapi
from twisted.logger import Logger

from dkserver.store import errors
from dkserver.store.database import driver_error
from dkserver.store.engine import PostgresEngine, Sqlite3Engine
from dkserver.store.errors import IntegrityError, StoreError, StoreUnavailable
from dkserver.store.files import diagnose_sqlite_files

SYNCHRONOUS_MODES = ("NORMAL", "FULL")

#: How long a statement waits for a lock held by another process (ms).
BUSY_TIMEOUT_MS = 5000


def open_pool(
    path: str, reactor: Any, synchronous: str = "NORMAL"
) -> adbapi.ConnectionPool:
    """Create the pool; the connection is opened lazily on the pool's thread."""
    mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(
            f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
            f"not {synchronous!r}"
        )

    return SqliteConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_reactor=reactor,
        cp_openfun=lambda conn: configure_sqlite(conn, mode),
    )


def configure_sqlite(conn: sqlite3.Connection, synchronous: str = "NORMAL") -> None:
    """The settings of every connection to a dkserver file: the server's
    pool and the admin CLI's (which works beside a running server)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA synchronous={synchronous}")


_SQLITE = Sqlite3Engine()


class SqliteConnectionPool(adbapi.ConnectionPool):
    """adbapi's pool, with every failure a dkserver error that names why.

    Statements already fail as dkserver errors (database.Txn); here the
    rest do too: opening the connection and ``COMMIT`` (where a full disk
    or a lock usually shows, WAL frames being written at commit).  SQLite
    reports EROFS, EPERM (an immutable file) and a failure to grow the
    ``-shm`` file as a bare "disk I/O error", so that is diagnosed from the
    files (writable? space left?) on the pool's thread.  A failed COMMIT
    on SQLite committed nothing: never in doubt.
    """

    def __init__(self, dbapiName: str, path: str, *args: Any, **kw: Any) -> None:
        super().__init__(dbapiName, path, *args, **kw)
        self.path = path

    def _runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Any:
        try:
            return super()._runInteraction(interaction, *args, **kw)
        except sqlite3.IntegrityError as e:
            raise IntegrityError(str(e).strip()) from e
        except sqlite3.Error as e:
            raise self._diagnosed(driver_error(_SQLITE, e)) from e
        except StoreUnavailable as e:
            diagnosed = self._diagnosed(e)
            if diagnosed is e:
                raise
            raise diagnosed from e.__cause__

    def _diagnosed(self, e: StoreError) -> StoreError:
        if not isinstance(e, StoreUnavailable) or e.cause not in (
            errors.IO_ERROR,
            errors.UNAVAILABLE,
            errors.READ_ONLY,
        ):
            return e
        found = diagnose_sqlite_files(self.path)
        if found is None:
            return e
        cause, detail = found
        reason = str(e).split(": ", 1)[-1]
        return StoreUnavailable(f"{reason}; {detail}", cause=cause)


#: Read connections (threads) per process, by default: what a few requests
#: at once need; every one is a thread and, on PostgreSQL, a server process.
DEFAULT_READ_POOL_SIZE = 4


def open_read_pool(
    path: str, reactor: Any, size: int = DEFAULT_READ_POOL_SIZE
) -> adbapi.ConnectionPool:
    """``size`` read-only SQLite connections, each on a thread of its own.

    ``query_only`` makes a stray write fail instead of taking the write lock;
    the busy timeout covers only the moments a WAL reader can wait (a
    checkpoint resetting the log, a database not in WAL mode yet).
    """

    def openfun(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only=ON")

    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        cp_min=1,
        cp_max=size,
        cp_reactor=reactor,
        cp_openfun=openfun,
        cp_noisy=False,
    )


#: PostgreSQL connections per process, by default: the group writer holds
#: one for its batch, reads (logins, backlogs, REST) share the rest.
DEFAULT_PG_POOL_SIZE = 8


class PgConnectionPool(adbapi.ConnectionPool):
    """adbapi's pool, surviving a PostgreSQL restart without failing twice.

    adbapi's own ``cp_reconnect`` notices a dead connection only when a
    transaction on it has already failed, and lets connection errors out as
    driver exceptions.  Here, on the pool's thread:

    * a connection that cannot be opened (server down, starting up, shutting
      down) fails the interaction with `StoreUnavailable`, at once or after
      ``connect_timeout``;
    * a connection found broken during an interaction is dropped, and the
      interaction runs once more on a fresh one.  Nothing was committed, so
      that is safe, and it means a pooled connection that went stale while
      the server restarted costs no request: the first use after the
      restart reconnects.  If the fresh connection fails too, the server is
      really gone: `StoreUnavailable`;
    * a connection broken during ``COMMIT`` is dropped and the error is
      `StoreUnavailable` with ``in_doubt`` (not retried: it may have
      committed).

    Recovery is therefore bounded by one connection attempt per interaction:
    no background reconnect loop, no waiting beyond ``connect_timeout`` and
    ``statement_timeout``.
    """

    log = Logger()

    def _runInteraction(self, interaction: Any, *args: Any, **kw: Any) -> Any:
        for attempt in (1, 2):
            conn = self._checkout()
            try:
                trans = self.transactionFactory(self, conn)
                result = interaction(trans, *args, **kw)
            except BaseException as e:
                if not _broken(conn):
                    self._rollback(conn)
                    raise
                self._discard(conn)
                if attempt == 1:
                    self.log.info("database connection lost; reconnecting")
                    continue
                raise StoreUnavailable(_reason(e)) from e
            try:
                trans.close()
                conn.commit()
            except BaseException as e:
                if not _broken(conn):
                    self._rollback(conn)
                    if isinstance(e, self.dbapi.IntegrityError):
                        raise IntegrityError(str(e).strip()) from e
                    if isinstance(e, self.dbapi.Error):
                        raise driver_error(_POSTGRES, e) from e
                    raise
                self._discard(conn)
                raise StoreUnavailable(_reason(e), in_doubt=True) from e
            return result
        raise AssertionError("unreachable")

    def _checkout(self) -> adbapi.Connection:
        """This thread's connection, opened if it has none."""
        try:
            return self.connectionFactory(self)
        except self.dbapi.Error as e:
            raise StoreUnavailable(_reason(e)) from e

    def _rollback(self, conn: adbapi.Connection) -> None:
        try:
            conn.rollback()
        except self.dbapi.Error:
            self._discard(conn)

    def _discard(self, conn: adbapi.Connection) -> None:
        """Forget (and close) this thread's connection: the next use opens one."""
        if self.connections.get(self.threadID()) is conn._connection:
            self.disconnect(conn._connection)


_POSTGRES = PostgresEngine()


def _broken(conn: adbapi.Connection) -> bool:
    return bool(getattr(conn._connection, "closed", False))


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def open_pg_pool(
    conninfo: str,
    reactor: Any,
    pool_size: int = DEFAULT_PG_POOL_SIZE,
    statement_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    *,
    read_only: bool = False,
) -> adbapi.ConnectionPool:
    """A psycopg 3 pool on adbapi's threads; connections open lazily there.

    adbapi rather than a pool of our own: it already runs each interaction
    on a thread with commit/rollback, and is what the SQLite side uses, so
    the stores and the group writer see one interface; `PgConnectionPool`
    adds what a server restart needs.  Every connection runs in UTC
    (zone-less stored times read as UTC, as on SQLite) with the statement
    timeout set, so a stuck query fails instead of holding a thread forever.
    ``read_only``: the read pool's connections refuse writes.
    """
    return PgConnectionPool(
        "psycopg",
        conninfo=conninfo,
        connect_timeout=max(1, round(connect_timeout)),
        cp_min=1,
        cp_max=pool_size,
        cp_reactor=reactor,
        cp_openfun=lambda conn: configure_postgres(
            conn, statement_timeout, read_only=read_only
        ),
        cp_noisy=False,
    )


def configure_postgres(
    conn: Any, statement_timeout: float = 30.0, *, read_only: bool = False
) -> None:
    """The session settings of every dkserver connection to PostgreSQL (the
    server's pool, its read pool and the admin CLI's): UTC, the statement
    timeout, and for the read pool no writes."""
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute(
        "SELECT set_config('statement_timeout', %s, false)",
        (str(max(1, int(statement_timeout * 1000))),),
    )
    if read_only:
        conn.execute("SET default_transaction_read_only = on")
    conn.commit()
