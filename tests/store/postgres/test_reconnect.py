"""The PostgreSQL pool across lost connections and an unreachable server."""

from __future__ import annotations

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor

from dkserver.store import Store, StoreUnavailable
from dkserver.store.writer import GroupWriter
from tests.store.test_writer import message
from tests.support.postgres import free_port


def terminate_backends(url: str) -> int:
    """End every other connection to ``url``'s database, as a restart would."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


@pytest_twisted.ensureDeferred
async def test_connections_the_server_ended_are_replaced_without_failing(pg_url):
    store = await Store.open(pg_url, reactor)
    try:
        await store.users.create("alice", "A", "k")
        await store.users.create("bob", "B", "k")
        writer = GroupWriter(store.pool, reactor)
        first = await writer.submit_message(message("bob", 1), None)
        assert terminate_backends(pg_url) >= 1
        # Each pooled connection is stale now; the first use of each one
        # reconnects and runs the interaction again, so nothing fails.
        second = await writer.submit_message(message("bob", 2), None)
        assert second > first
        pending = await store.messages.pending_direct("bob")
        assert [m.id for m in pending] == [first, second]
        assert await store.users.get("carol") is None
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_server_is_store_unavailable():
    url = f"postgresql://dk:pw@127.0.0.1:{free_port()}/dk"  # nothing listens
    store = Store.create(url, reactor, connect_timeout=2)
    try:
        with pytest.raises(StoreUnavailable, match="database unavailable"):
            await store.users.get("alice")
        writer = GroupWriter(store.pool, reactor)
        with pytest.raises(StoreUnavailable):
            await writer.submit_message(message("bob", 1), None)
        assert writer.unavailable
    finally:
        await store.close()
