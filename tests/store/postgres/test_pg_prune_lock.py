"""PostgreSQL: a prune step takes the prune advisory lock or stands back."""

from __future__ import annotations

import psycopg
import pytest_twisted
from twisted.internet import reactor

from dkserver.retention import Policy, Pruner
from dkserver.store import Store
from dkserver.store.retention import PRUNE_LOCK
from tests.store.test_store_retention import DAY, T0, msg


@pytest_twisted.ensureDeferred
async def test_a_held_prune_lock_makes_a_pass_stand_back(pg_url):
    store = await Store.open(pg_url, reactor)
    try:
        for name in ("alice", "bob"):
            await store.users.create(name, name, "k")
        ids = await store.messages.add_many([msg("bob", T0)])
        await store.messages.mark_delivered(ids, delivered_ns=T0)
        pruner = Pruner(store, Policy(30, 90, 30, 500), time_ns=lambda: T0 + 31 * DAY)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK,))
            report = await pruner.run_pass()
            assert report.busy and report.deleted == {}
            conn.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK,))
        report = await pruner.run_pass()
        assert not report.busy and report.deleted == {"messages": 1}
    finally:
        await store.close()
