"""Message ids on PostgreSQL: one block per transaction, in commit order."""

from __future__ import annotations

import threading
import time

import psycopg

from dkserver.store.database import Txn
from dkserver.store.engine import PostgresEngine
from dkserver.store.url import parse_database_url


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _txn(conn: psycopg.Connection) -> Txn:
    return Txn(conn.cursor(), PostgresEngine())


def test_ids_wait_for_the_transaction_holding_the_lock(pg_url):
    """A second writer cannot take ids until the first commits, and then gets
    the next block: a reader that sees id N sees every id below it."""
    conninfo = parse_database_url(pg_url).conninfo
    with psycopg.connect(conninfo) as first, psycopg.connect(conninfo) as second:
        a = PostgresEngine().next_message_ids(_txn(first), 5)
        got: list[int] = []
        worker = threading.Thread(
            target=lambda: got.extend(
                PostgresEngine().next_message_ids(_txn(second), 3)
            )
        )
        worker.start()
        with psycopg.connect(conninfo, autocommit=True) as watcher:
            waiting = wait_for(
                lambda: (
                    watcher.execute(
                        "SELECT count(*) FROM pg_locks"
                        " WHERE locktype = 'advisory' AND NOT granted"
                    ).fetchone()[0]
                    == 1
                )
            )
        assert waiting and not got  # the second writer waits for the lock
        first.commit()
        worker.join(30)
        second.commit()
    assert a == list(range(a[0], a[0] + 5))
    assert got == [a[-1] + 1, a[-1] + 2, a[-1] + 3]


def test_one_id_and_the_sequence_after_a_block(pg_url):
    conninfo = parse_database_url(pg_url).conninfo
    with psycopg.connect(conninfo) as conn:
        (one,) = PostgresEngine().next_message_ids(_txn(conn), 1)
        block = PostgresEngine().next_message_ids(_txn(conn), 4)
        after = conn.execute(
            "SELECT nextval(pg_get_serial_sequence('messages', 'id'))"
        ).fetchone()[0]
    assert block == [one + 1, one + 2, one + 3, one + 4]
    assert after == one + 5  # the identity default continues after the block
