"""What the revocation poll costs (dkserver/auth/revocation.py).

Each server reads two ``server_settings`` rows every DK_REVOCATION_POLL
(0.5 s) through its store pool, and reloads the revoked users only when the
version changed.  This measures one poll (the round trip through the pool's
thread, as the server makes it) and one reload with N revoked users among
100,000, on SQLite or PostgreSQL::

    python -m bench.revocation_poll [--db PATH_OR_URL] [--polls 2000]

A PostgreSQL ``--db`` must be an empty database (the bench fills it).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

from twisted.internet import defer, task

from dkserver.store import Store
from dkserver.store.accounts import ban_txn, revoke_tokens_txn

USERS = 100_000
REVOKED = 1_000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _fill_txn(txn, users: int, revoked: int) -> None:
    txn.executemany(
        "INSERT INTO users (user_id, username, public_key, registered_ns)"
        " VALUES (?, ?, ?, ?)",
        [(f"u{i:06d}", f"User {i}", "a" * 44, i) for i in range(users)],
    )
    for i in range(revoked):
        if i % 2:
            ban_txn(txn, f"u{i:06d}", 1000 + i)
        else:
            revoke_tokens_txn(txn, f"u{i:06d}", 1000 + i)


async def run(reactor, db: str, polls: int) -> None:
    store = await Store.open(db, reactor)
    try:
        await store.pool.runInteraction(_fill_txn, USERS, REVOKED)
        times = []
        cpu0 = _cpu()
        for _ in range(polls):
            t0 = time.perf_counter()
            await store.accounts.versions()
            times.append(time.perf_counter() - t0)
        cpu = (_cpu() - cpu0) / polls
        times.sort()
        print(
            f"poll ({'PostgreSQL' if store.is_postgresql else 'SQLite'}): "
            f"median {statistics.median(times) * 1e6:.0f} us, "
            f"p99 {times[int(len(times) * 0.99)] * 1e6:.0f} us, "
            f"CPU {cpu * 1e6:.0f} us per poll "
            f"(= {cpu * 2 * 100:.3f} % of a core at 2 polls/s)"
        )
        reloads = []
        for _ in range(20):
            t0 = time.perf_counter()
            rows = await store.accounts.revoked()
            reloads.append(time.perf_counter() - t0)
        assert len(rows) == REVOKED
        print(
            f"reload of {REVOKED} revoked users among {USERS}: median "
            f"{statistics.median(reloads) * 1e3:.1f} ms (only when the version "
            "changed)"
        )
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None)
    parser.add_argument("--polls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.path.join(tmp, "bench.db")
        task.react(
            lambda reactor: defer.Deferred.fromCoroutine(run(reactor, db, args.polls))
        )


if __name__ == "__main__":
    main()
