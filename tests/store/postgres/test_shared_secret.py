"""Nodes starting at once on one PostgreSQL database agree on one JWT secret
(dkserver.store.settings, dkserver.cluster.secret)."""

from __future__ import annotations

import subprocess
import sys
import threading

import psycopg
import pytest_twisted
from twisted.internet import defer, reactor

from dkserver.cluster.secret import SETTING, database_secret
from dkserver.store import Store
from dkserver.store.database import Txn
from dkserver.store.engine import PostgresEngine
from dkserver.store.settings import get_or_create_txn
from dkserver.store.url import parse_database_url


def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(parse_database_url(url).conninfo)


def stored(url: str) -> list[tuple]:
    with connect(url) as conn:
        return conn.execute("SELECT name, value FROM server_settings").fetchall()


def test_an_inserter_waits_for_the_first_one_and_takes_its_value(pg_url):
    """The second node's INSERT blocks on the first one's uncommitted row,
    then does nothing and reads the first one's value: never its own."""
    first = connect(pg_url)
    try:
        assert get_or_create_txn(Txn(first.cursor(), PostgresEngine()), "k", "A") == "A"
        # first's transaction is still open: its row is not committed yet
        result: list[str] = []

        def second() -> None:
            with connect(pg_url) as conn:
                result.append(
                    get_or_create_txn(Txn(conn.cursor(), PostgresEngine()), "k", "B")
                )

        thread = threading.Thread(target=second)
        thread.start()
        first.commit()
        thread.join(timeout=30)
    finally:
        first.close()
    assert result == ["A"]
    assert stored(pg_url) == [("k", "A")]


def test_threads_racing_to_create_the_secret_all_get_one(pg_url):
    count = 8
    barrier = threading.Barrier(count)
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def node(i: int) -> None:
        try:
            with connect(pg_url) as conn:
                barrier.wait(timeout=30)
                value = get_or_create_txn(
                    Txn(conn.cursor(), PostgresEngine()), SETTING, f"{i:064x}"
                )
            with lock:
                results.append(value)
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(results) == count and len(set(results)) == 1
    assert stored(pg_url) == [(SETTING, results[0])]


_STARTER = """
import sys
from twisted.internet import defer, task
from dkserver.cluster.secret import database_secret
from dkserver.store import Store

async def main(reactor, url):
    store = await Store.open(url, reactor)
    try:
        print("ready", flush=True)
        sys.stdin.readline()  # the start signal, to every process at once
        print((await database_secret(store.settings)).hex(), flush=True)
    finally:
        await store.close()

task.react(lambda reactor, url: defer.Deferred.fromCoroutine(main(reactor, url)),
           [sys.argv[1]])
"""


def test_processes_starting_at_once_share_one_secret(pg_url):
    """As nodes do: separate processes, each with its own pool, released
    together once every one has its database open."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _STARTER, pg_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * len(procs), outputs
    secrets = {out.strip() for out, _ in outputs}
    assert len(secrets) == 1
    assert stored(pg_url) == [(SETTING, secrets.pop())]


@pytest_twisted.ensureDeferred
async def test_stores_racing_through_their_pools_agree(pg_url):
    stores = [await Store.open(pg_url, reactor) for _ in range(4)]
    try:
        secrets = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(database_secret(s.settings)) for s in stores]
        )
    finally:
        for s in stores:
            await s.close()
    assert len(set(secrets)) == 1
