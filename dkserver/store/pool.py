"""The connection pools: one SQLite connection, or a PostgreSQL pool.

SQLite allows a single writer, so the pool holds exactly one connection on one
thread (``cp_min = cp_max = 1``): every transaction is serialized there and
never blocks the reactor.

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

    def openfun(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA synchronous={mode}")

    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_reactor=reactor,
        cp_openfun=openfun,
    )


#: PostgreSQL connections per process, by default: the group writer holds
#: one for its batch, reads (logins, backlogs, REST) share the rest.
DEFAULT_PG_POOL_SIZE = 8


def open_pg_pool(
    conninfo: str,
    reactor: Any,
    pool_size: int = DEFAULT_PG_POOL_SIZE,
    statement_timeout: float = 30.0,
    connect_timeout: float = 10.0,
) -> adbapi.ConnectionPool:
    """A psycopg 3 pool on adbapi's threads; connections open lazily there.

    adbapi rather than a pool of our own: it already runs each interaction
    on a thread with commit/rollback, reconnects a connection whose rollback
    fails (``cp_reconnect``), and is what the SQLite side uses, so the stores
    and the group writer see one interface.  Every connection runs in UTC
    (zone-less stored times read as UTC, as on SQLite) with the statement
    timeout set, so a stuck query fails instead of holding a thread forever.
    """

    def openfun(conn: Any) -> None:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false)",
            (str(max(1, int(statement_timeout * 1000))),),
        )
        conn.commit()

    return adbapi.ConnectionPool(
        "psycopg",
        conninfo=conninfo,
        connect_timeout=max(1, round(connect_timeout)),
        cp_min=1,
        cp_max=pool_size,
        cp_reactor=reactor,
        cp_openfun=openfun,
        cp_reconnect=True,
        cp_noisy=False,
    )
