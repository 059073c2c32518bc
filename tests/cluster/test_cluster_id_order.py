"""Message ids commit in id order across processes (what the broadcast
floor relies on with several nodes writing): two writer processes insert
broadcasts as fast as they can through the store, and a reader polling the
table never sees id N without every id below it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psycopg

from tests.reliability.daemon import ROOT

WRITER = textwrap.dedent(
    """
    import sys
    from twisted.internet import task
    from twisted.internet.defer import Deferred
    from dkserver.store import Store
    from dkserver.store.messages import NewMessage

    async def main(reactor, url, who, batches):
        store = await Store.open(url, reactor)
        try:
            for i in range(int(batches)):
                await store.messages.add_many([
                    NewMessage(who, "broadcast", "2026-01-01T00:00:00Z",
                               f"{who} {i} {k}", True, None, False, 0)
                    for k in range(1 + i % 5)
                ])
        finally:
            await store.close()

    task.react(lambda r: Deferred.fromCoroutine(main(r, *sys.argv[1:])))
    """
)


def test_ids_become_visible_in_order_with_two_writer_processes(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for who in ("w1", "w2"):
            conn.execute(
                "INSERT INTO users (user_id, username, public_key, registered_ns)"
                " VALUES (%s, %s, %s, 0)",
                (who, who, "key"),
            )
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, pg_url, who, "300"],
                cwd=ROOT,
                stderr=subprocess.PIPE,
            )
            for who in ("w1", "w2")
        ]
        polls = 0
        seen_max = 0
        while any(w.poll() is None for w in writers) or polls == 0:
            ids = [r[0] for r in conn.execute("SELECT id FROM messages ORDER BY id")]
            polls += 1
            if ids:
                # No hole: every id up to the newest visible one is visible.
                assert ids == list(range(ids[0], ids[0] + len(ids))), (
                    f"ids visible out of order after {polls} polls"
                )
                seen_max = max(seen_max, ids[-1])
        for w in writers:
            _, err = w.communicate()
            assert w.returncode == 0, err.decode()[-2000:]
        total = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
    assert total[0] == 2 * sum(1 + i % 5 for i in range(300))
    assert polls > 10 and seen_max > 0
