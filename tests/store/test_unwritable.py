"""A database that cannot be written: a named `StoreUnavailable`, and a group
writer that announces the outage once, probes while idle and recovers.

The real faults (a full disk, an immutable file, a held lock, a read-only
or revoked PostgreSQL) under a real daemon are in
tests/reliability/test_storage_faults.py; here the driver errors and the
writer's reaction, on each backend.
"""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.logger import LogLevel, globalLogPublisher

from dkserver.store import errors
from dkserver.store.errors import StoreUnavailable
from dkserver.store.writer import GroupWriter
from tests.store.test_writer import _Inspect, message
from tests.support.waiting import wait_for


def _read_only_insert(txn) -> None:
    """An insert in a read-only transaction (SQLite: ``query_only``)."""
    sqlite = txn.engine.name == "sqlite"
    txn.execute("PRAGMA query_only = 1" if sqlite else "SET TRANSACTION READ ONLY")
    try:
        txn.execute("INSERT INTO server_settings (name, value) VALUES ('a', 'b')")
    finally:
        if sqlite:
            txn.execute("PRAGMA query_only = 0")


@pytest_twisted.ensureDeferred
async def test_a_read_only_database_is_unavailable_read_only(store):
    with pytest.raises(StoreUnavailable) as caught:
        await store.pool.runInteraction(_read_only_insert)
    assert caught.value.cause == errors.READ_ONLY
    assert "database not writable (read-only)" in str(caught.value)
    await store.users.create("alice", "A", "k")  # the next write works


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_a_lock_held_by_another_process_is_unavailable_locked(store, db_path):
    await store.users.create("alice", "A", "k")
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable) as caught:  # after the busy timeout
            await store.users.create("bob", "B", "k")
        assert caught.value.cause == errors.LOCKED
        assert (await store.users.get("alice")).username == "A"  # WAL: reads go on
    finally:
        other.execute("ROLLBACK")
        other.close()
    await store.users.create("bob", "B", "k")


class _Fault:
    """The store's database, failing every interaction while ``failing``."""

    def __init__(self, db, cause: str) -> None:
        self._db = db
        self.engine = db.engine
        self.cause = cause
        self.failing = True
        self.attempts = 0

    def runInteraction(self, func, *args, **kwargs):
        self.attempts += 1
        if self.failing:
            return fail(StoreUnavailable("the test broke it", cause=self.cause))
        return self._db.runInteraction(func, *args, **kwargs)


class _Events(list):
    def __enter__(self):
        globalLogPublisher.addObserver(self.append)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self.append)

    def writer(self, level: LogLevel) -> list[dict]:
        return [
            e
            for e in self
            if e.get("log_namespace", "").endswith("GroupWriter")
            and e["log_level"] == level
        ]


@pytest_twisted.ensureDeferred
async def test_an_idle_writer_notices_the_end_of_an_outage_by_itself(
    store, sql, db_path
):
    await store.users.create("alice", "A", "k")
    await store.users.create("bob", "B", "k")
    fault = _Fault(store.pool, errors.DISK_FULL)
    writer = GroupWriter(fault, reactor)
    with _Events() as events:
        for n in range(3):
            with pytest.raises(StoreUnavailable):
                await writer.submit_message(message("bob", n), None)
        assert not writer.writable and writer.unavailable_cause == errors.DISK_FULL
        await wait_for(lambda: fault.attempts >= 6, "the writer to probe", 10)
        assert not writer.writable
        fault.failing = False  # the disk has room again; nobody sends
        await wait_for(lambda: writer.writable, "the probe to succeed", 10)
    warnings = events.writer(LogLevel.warn)
    assert len(warnings) == 1 and warnings[0]["cause"] == errors.DISK_FULL
    infos = events.writer(LogLevel.info)
    assert len(infos) == 1 and infos[0]["cause"] == errors.DISK_FULL
    probe = _Inspect(sql, db_path).execute(
        "SELECT count(*) FROM server_settings WHERE name = 'writer_probe'"
    )
    assert probe.fetchone() == (1,)
    attempts = fault.attempts
    await wait_for(lambda: not writer._running, "the writer to go idle", 5)
    assert fault.attempts == attempts  # no probing once writable
    assert await writer.submit_message(message("bob", 9), None)


@pytest_twisted.ensureDeferred
async def test_the_probe_stores_nothing_but_fails_where_messages_would(
    store, sql, db_path
):
    """The probe's message row is taken back; in a read-only transaction
    the probe fails as a message would."""
    from dkserver.store.writer import _probe_txn

    await store.users.create("alice", "A", "k")
    await store.pool.runInteraction(_probe_txn)
    con = _Inspect(sql, db_path)
    assert con.execute("SELECT count(*) FROM messages").fetchone() == (0,)

    def read_only_probe(txn) -> None:
        sqlite = txn.engine.name == "sqlite"
        txn.execute("PRAGMA query_only = 1" if sqlite else "SET TRANSACTION READ ONLY")
        try:
            _probe_txn(txn)
        finally:
            if sqlite:
                txn.execute("PRAGMA query_only = 0")

    with pytest.raises(StoreUnavailable) as caught:
        await store.pool.runInteraction(read_only_probe)
    assert caught.value.cause == errors.READ_ONLY
    writer = GroupWriter(store.pool, reactor)
    assert await writer.submit_message(message("alice", 1), None) == 1
