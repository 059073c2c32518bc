"""dkserver's storage: one narrow async interface over SQLite or PostgreSQL.

Handlers call ``await store.messages.pending_direct(user_id)`` and never see
SQL, a cursor, a driver exception (failures are `StoreError`) or which
backend runs: the store modules are written once over `Database`, and the
engine (dkserver.store.engine) holds what differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from twisted.enterprise import adbapi
from twisted.logger import Logger

from dkserver.store import pg_schema
from dkserver.store.accounts import AccountStore
from dkserver.store.analytics import AnalyticsStore
from dkserver.store.apis import Api, ApiStore, TooManyApis
from dkserver.store.database import Database, ReadDatabase, Txn
from dkserver.store.descriptions import DescriptionStore
from dkserver.store.engine import PostgresEngine, Sqlite3Engine
from dkserver.store.errors import (
    DatabaseUnusable,
    IntegrityError,
    StoreError,
    StoreUnavailable,
    UserExists,
)
from dkserver.store.messages import MessageStore, NewMessage, StoredMessage
from dkserver.store.pool import (
    DEFAULT_PG_POOL_SIZE,
    DEFAULT_READ_POOL_SIZE,
    open_pg_pool,
    open_pool,
    open_read_pool,
)
from dkserver.store.retention import RetentionStore
from dkserver.store.schema import LATEST_VERSION, migrate, preflight, version_of
from dkserver.store.settings import SettingsStore
from dkserver.store.trackers import Tracker, TrackerInfo, TrackerStore
from dkserver.store.url import DatabaseUrl, parse_database_url
from dkserver.store.users import User, UserStore

__all__ = [
    "AnalyticsStore",
    "Api",
    "ApiStore",
    "DatabaseUnusable",
    "DescriptionStore",
    "IntegrityError",
    "MessageStore",
    "NewMessage",
    "SettingsStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredMessage",
    "TooManyApis",
    "Tracker",
    "TrackerInfo",
    "TrackerStore",
    "User",
    "UserExists",
    "UserStore",
    "preflight",
    "preflight_database",
]


#: While PostgreSQL is not up yet, preflight tries again this often.
PREFLIGHT_RETRY = 0.5


def preflight_database(
    database: DatabaseUrl,
    connect_timeout: float = 10.0,
    check: Callable[[Txn], object] | None = None,
    *,
    migrate: bool = True,
    waiting: Callable[[str], None] | None = None,
) -> None:
    """Blocking, before the reactor runs: refuse a database dkserver cannot
    use, with a one-line `StoreError` instead of a failure after startup.

    SQLite: the file checks of `schema.preflight`.  PostgreSQL: connect,
    bring the schema up to date (under the migration lock), check that the
    role may read and write every table and take ids, then run ``check`` in
    a transaction of its own (the shared JWT secret: dkserver.cluster.secret).
    ``migrate=False`` (``dkserver checkconfig``) changes nothing: it checks
    the rights only on a database that already has dkserver's schema, and
    runs no ``check``.

    Given ``waiting`` (startup), a server that is not up yet (refused,
    unreachable, "starting up") is tried again for up to ``connect_timeout``
    in all, so dkserver and PostgreSQL may start together; ``waiting(reason)``
    is told once when that begins.  A refusal by the server itself
    (password, database name) fails at once.
    """
    if not database.is_postgresql:
        preflight(str(database.path))
        return
    deadline = time.monotonic() + connect_timeout
    told = False
    while True:
        try:
            conn = psycopg.connect(
                database.conninfo, connect_timeout=max(1, round(connect_timeout))
            )
            break
        except psycopg.Error as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            if (
                waiting is None
                or not _not_up_yet(e)
                or time.monotonic() + PREFLIGHT_RETRY > deadline
            ):
                raise DatabaseUnusable(
                    f"cannot connect to PostgreSQL at {database.redacted}: {reason}"
                ) from None
        if not told:
            waiting(reason)
            told = True
        time.sleep(PREFLIGHT_RETRY)
    try:
        conn.autocommit = True
        if migrate:
            pg_schema.migrate_connection(conn)
        if (
            migrate
            or conn.execute("SELECT to_regclass('schema_version')").fetchone()[0]
        ):
            _check_privileges(conn)
        if check is not None and migrate:
            with conn.transaction():
                check(Txn(conn.cursor(), PostgresEngine()))
    except psycopg.Error as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DatabaseUnusable(
            f"cannot use PostgreSQL database {database.redacted}: {reason}"
        ) from None
    finally:
        conn.close()


def _database_size_txn(txn: Txn) -> int:
    return txn.engine.database_size(txn)


def _not_up_yet(e: psycopg.Error) -> bool:
    """No answer from the server (no SQLSTATE: refused, timed out, no such
    host yet) or "the database system is starting up" (57P03)."""
    return isinstance(e, psycopg.OperationalError) and e.sqlstate in (None, "57P03")


def _check_privileges(conn: Any) -> None:
    missing = [
        table
        for table in (*pg_schema.TABLES, *pg_schema.LOCAL_TABLES, "schema_version")
        if not conn.execute(
            "SELECT has_table_privilege(%s, 'SELECT,INSERT,UPDATE,DELETE')", (table,)
        ).fetchone()[0]
    ]
    missing += [
        f"{table}.id sequence"
        for table in pg_schema.SEQUENCED_TABLES
        if not conn.execute(
            "SELECT has_sequence_privilege(pg_get_serial_sequence(%s, 'id'), 'USAGE')",
            (table,),
        ).fetchone()[0]
    ]
    if missing:
        raise DatabaseUnusable(
            f"database user {conn.info.user!r} lacks rights on "
            f"{', '.join(missing)} in database {conn.info.dbname!r}; grant it "
            "SELECT, INSERT, UPDATE, DELETE on dkserver's tables and USAGE on "
            "their sequences"
        )


class Store:
    log = Logger()

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        path: str = "",
        engine: Sqlite3Engine | PostgresEngine | None = None,
        read_pool: adbapi.ConnectionPool | None = None,
    ) -> None:
        #: The raw adbapi pool (migrations and tests that inspect the file).
        self._pool = pool
        self._read_pool = read_pool
        self._path = path
        self._closed = False
        self.engine = engine if engine is not None else Sqlite3Engine()
        self._db = db = Database(pool, self.engine)
        #: Public reads (profiles, the user list, trackers, statistics); the
        #: writer's pool itself when there is no read pool.  The messaging
        #: path (backlogs, delivery marks) stays on the writer's pool.
        self.reads: Database = (
            db if read_pool is None else ReadDatabase(read_pool, self.engine, db)
        )
        reads = self.reads
        self.users = UserStore(db, reads=reads)
        self.accounts = AccountStore(db)
        self.messages = MessageStore(db)
        self.descriptions = DescriptionStore(db, reads=reads)
        self.analytics = AnalyticsStore(db, reads=reads)
        self.trackers = TrackerStore(db, reads=reads)
        self.apis = ApiStore(db, reads=reads)
        self.settings = SettingsStore(db)
        self.retention = RetentionStore(db)

    @property
    def pool(self) -> Database:
        """For the group writer (dkserver.store.writer), which shares it."""
        return self._db

    @classmethod
    def create(
        cls,
        database: str | DatabaseUrl,
        reactor: Any,
        synchronous: str = "NORMAL",
        *,
        pool_size: int = DEFAULT_PG_POOL_SIZE,
        statement_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        read_pool_size: int = DEFAULT_READ_POOL_SIZE,
    ) -> Store:
        """Build the store without connecting; call `migrate` before use.

        ``database`` is the ``Database`` setting (a SQLite path or a
        postgresql:// URL, parsed or not).  ``synchronous`` applies to SQLite,
        the pool size and timeouts to PostgreSQL; ``read_pool_size`` read
        connections are opened beside the writer's on either (none for an
        in-memory SQLite database, which another connection cannot see).
        For services constructed before the reactor runs; `open` does both.
        """
        url = (
            database
            if isinstance(database, DatabaseUrl)
            else parse_database_url(database)
        )
        if url.is_postgresql:
            pool = open_pg_pool(
                url.conninfo, reactor, pool_size, statement_timeout, connect_timeout
            )
            reads = open_pg_pool(
                url.conninfo,
                reactor,
                read_pool_size,
                statement_timeout,
                connect_timeout,
                read_only=True,
            )
            return cls(pool, url.redacted, PostgresEngine(), reads)
        path = str(url.path)
        shared = path == ":memory:" or path.startswith("file:")
        return cls(
            open_pool(path, reactor, synchronous),
            path,
            read_pool=None if shared else open_read_pool(path, reactor, read_pool_size),
        )

    @classmethod
    async def open(
        cls,
        database: str | DatabaseUrl,
        reactor: Any,
        synchronous: str = "NORMAL",
        **pg_settings: Any,
    ) -> Store:
        """Open the database and bring its schema up to date.

        Raises `StoreError` (`DatabaseUnusable`) if the schema is newer than
        this code knows; the pool is closed again then.
        """
        store = cls.create(database, reactor, synchronous, **pg_settings)
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def is_postgresql(self) -> bool:
        return isinstance(self.engine, PostgresEngine)

    async def migrate(self) -> int:
        """Bring the schema to the latest version (on the pool's thread).

        Returns the version found. Running it again is a no-op.
        """
        if self.is_postgresql:
            found = await pg_schema.migrate(self._pool)
            latest = pg_schema.LATEST_VERSION
        else:
            found = await migrate(self._pool)
            latest = LATEST_VERSION
        if isinstance(self.reads, ReadDatabase):
            self.reads.open()
        if found != latest:
            self.log.info(
                "database {path} upgraded from schema {found} to {latest}",
                path=self._path,
                found=found,
                latest=latest,
            )
        return found

    async def database_size(self) -> int:
        """Bytes the database takes (SQLite: file plus WAL; PostgreSQL:
        ``pg_database_size``), read on the pool's thread."""
        return await self._db.runInteraction(_database_size_txn)

    async def schema_version(self) -> int:
        """The database's schema version, changing nothing (0: empty)."""
        if self.is_postgresql:
            return await self._pool.runWithConnection(pg_schema.current_version)
        return await self._pool.runWithConnection(version_of)

    @property
    def latest_version(self) -> int:
        """The schema version this code writes on this backend."""
        return pg_schema.LATEST_VERSION if self.is_postgresql else LATEST_VERSION

    async def close(self) -> None:
        """Close the pool; call after pending writes have drained.

        This waits for the transaction in flight (if any) to finish. Closing
        twice is harmless.
        """
        if not self._closed:
            self._closed = True
            if self._read_pool is not None:
                self._read_pool.close()
            self._pool.close()
