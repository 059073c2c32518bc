"""Public reads have connections of their own (issue 12, item 9).

A write that cannot commit (another process holds the write lock, every
writer connection waits for it) must not hold up the reads the public REST
endpoints make: on SQLite the read pool's WAL readers, on PostgreSQL its
read-only connections, answer meanwhile.  A read that starts after a commit
sees it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from dkserver.store import Store, StoreError
from dkserver.store.pool import DEFAULT_PG_POOL_SIZE
from tests.support.waiting import sleep

KEY = "A" * 43 + "="


def hold_write_lock(db_path: str) -> Callable[[], None]:
    """Take the lock every dkserver write to ``users`` needs, from another
    connection (as another process would); returns its release.

    SQLite: ``BEGIN IMMEDIATE`` (the database's one write lock).
    PostgreSQL: ``LOCK TABLE users IN EXCLUSIVE MODE`` (writes to it wait,
    plain reads do not).
    """
    if db_path.startswith("postgresql://"):
        pg = psycopg.connect(db_path)
        pg.execute("LOCK TABLE users IN EXCLUSIVE MODE")
        return lambda: (pg.rollback(), pg.close())
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return lambda: (conn.execute("ROLLBACK"), conn.close())


async def blocked_writes(store: Store, db_path: str, count: int) -> list[Deferred]:
    """``count`` registrations started while the write lock is held; they
    are still waiting after a moment (else the lock did not hold them)."""
    writes = [
        Deferred.fromCoroutine(store.users.create(f"blocked{i}", f"b{i}", KEY))
        for i in range(count)
    ]
    await sleep(0.3)
    assert not any(d.called for d in writes), "the held lock did not block writes"
    return writes


@pytest_twisted.ensureDeferred
async def test_reads_answer_while_every_writer_waits_for_a_held_lock(
    store: Store, db_path: str
):
    await store.users.create("alice", "Alice", KEY)
    await store.descriptions.set("alice", ["knows things"])
    # More writes than the writer's pool has connections (PostgreSQL: 8):
    # every writer connection is taken by a waiting write.
    release = hold_write_lock(db_path)
    try:
        writes = await blocked_writes(
            store, db_path, 1 if not store.is_postgresql else DEFAULT_PG_POOL_SIZE + 1
        )
        # Another store on the same database, nothing cached yet (migrating
        # it would need the lock: its schema is current, so open reads only).
        fresh = Store.create(db_path, reactor)
        fresh.reads.open()
        try:
            assert (await fresh.users.get("alice")).username == "Alice"
            assert await fresh.users.exists("nobody") is False
            assert await fresh.users.all_ids() == ["alice"]
            assert await fresh.descriptions.get("alice") == ["knows things"]
            assert (await fresh.analytics.stats(0))["daily_active_users"] == 0
            assert await fresh.trackers.everyone() == []
            assert await fresh.apis.everyone() == []
            # The same on the store whose writer is the one waiting.
            assert await store.users.all_ids() == ["alice"]
            assert not any(d.called for d in writes), "reads waited for the lock"
        finally:
            await fresh.close()
    finally:
        release()
    # The lock gone, the writes commit, and a read after them sees them.
    results = await DeferredList(writes, consumeErrors=True)
    assert all(ok for ok, _ in results), results
    ids = await store.users.all_ids()
    assert {f"blocked{i}" for i in range(len(writes))} <= set(ids)


@pytest_twisted.ensureDeferred
async def test_a_read_after_a_commit_sees_it(store: Store):
    for i in range(20):
        await store.users.create(f"u{i:02}", f"user {i}", KEY)
        assert await store.users.exists(f"u{i:02}")
        await store.descriptions.set(f"u{i:02}", [f"v{i}"])
        assert await store.descriptions.get(f"u{i:02}") == [f"v{i}"]
    ids, encoded = await store.users.all_ids_encoded()
    assert ids == [f"u{i:02}" for i in range(20)]
    assert encoded == [f'"u{i:02}"'.encode() for i in range(20)]


def _write_users_txn(txn) -> None:
    txn.execute(
        "INSERT INTO users (user_id, username, public_key) VALUES (?, ?, ?)",
        ("sneaky", "s", KEY),
    )


@pytest_twisted.ensureDeferred
async def test_the_read_pool_refuses_writes(store: Store):
    assert store.reads is not store.pool  # a pool of its own
    with pytest.raises(StoreError):
        await store.reads.runInteraction(_write_users_txn)
    assert await store.users.all_ids() == []
