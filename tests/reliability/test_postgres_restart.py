"""PostgreSQL restarts under a running dkserver: refuse, recover, lose nothing.

dkserver runs as a real process on a PostgreSQL of this test's own (the
session's shared server stays up for the other tests), with durable commits
(``synchronous_commit=on``: an immediate shutdown must not lose what was
acknowledged).  Senders stream signed direct messages to receivers that stay
connected; PostgreSQL is stopped (``pg_ctl stop -m fast``, or ``immediate``:
a crash) and started again on the same port.  Then:

* while it is down, dkserver stays up: each sender is told "Internal error:
  message not stored; please resend" (docs/protocol.md), and REST answers
  503 with the JSON error shape;
* once it is back, dkserver reconnects by itself: new messages are stored
  and delivered, REST works again;
* every message a sender saw acknowledged (not answered with the resend
  frame) is in the database and reached its recipient, exactly once; the
  delivery marks of the outage are not lost (every row ends ``delivered``);
* the database is sound (tests/reliability/daemon.py).

And dkserver started while PostgreSQL is still down waits for it (up to
``DK_DB_CONNECT_TIMEOUT``) instead of exiting.

A sender's frames carry no id, so "acknowledged" is counted: every frame is
answered either by storing it (no reply) or by one resend frame, so per
sender ``stored + refused == sent``; fewer means an acknowledged message was
lost.  More is allowed only when dkserver logged a commit whose outcome it
could not know (the connection broke during ``COMMIT``): such a message may
be stored and also refused.
"""

from __future__ import annotations

from collections import Counter

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from tests.reliability.daemon import Daemon
from tests.reliability.streaming import (
    Streamer,
    Traffic,
    open_clients,
)
from tests.support.client import Identity, get, post_json, register_and_login
from tests.support.waiting import wait_for

RESEND = "Internal error: message not stored; please resend"

#: How long dkserver may take to notice an outage, and to recover from one:
#: generous for a loaded machine, not a performance bound.
OUTAGE_TIMEOUT = 20.0


def refusals(client) -> int:
    return sum(1 for f in client.received if f.get("content") == RESEND)


def other_system_frames(client) -> list[dict]:
    return [
        f
        for f in client.received
        if f.get("from") == "system" and f.get("content") != RESEND
    ]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest_twisted.ensureDeferred
async def test_postgres_restart_refuses_then_recovers_losing_nothing_acknowledged(
    tmp_path, own_postgres, mode
):
    pg = own_postgres.server
    daemon = Daemon(tmp_path, pg.url(pg.create_database(migrated=True)))
    traffic = Traffic()
    clients = []
    streamers: list[Streamer] = []
    try:
        server = await daemon.start()
        senders = [Identity("s0"), Identity("s1")]
        receivers = [Identity("r0"), Identity("r1")]
        _, rx, tx = await open_clients(server, senders, receivers)
        clients += [*rx.values(), *tx.values()]
        streamers = [
            Streamer(s, tx[s.user_id], list(rx), traffic, (64, 256), 2, 0.02)
            for s in senders
        ]

        def received_from(user_id: str, after_seq: int) -> bool:
            return any(
                f.get("from") == user_id
                and int(f["content"].split("|")[0].rsplit("-", 1)[1]) >= after_seq
                for c in rx.values()
                for f in c.received
            )

        await wait_for(
            lambda: all(received_from(s.user_id, 20) for s in senders),
            "messages flowing before the outage",
            timeout=OUTAGE_TIMEOUT,
        )

        await deferToThread(own_postgres.shut_down, mode)
        await wait_for(
            lambda: all(refusals(tx[s.user_id]) >= 3 for s in senders),
            "every sender told to resend",
            timeout=OUTAGE_TIMEOUT,
            interval=0.1,
        )
        assert daemon.proc.poll() is None, daemon.log_tail()
        # (a user nobody asked for yet: known ones are answered from a cache)
        code, body = await get(server, "/auth/users/nobody")
        assert code == 503 and body["error"] is True, (code, body)
        assert isinstance(body["message"], str) and body["message"]
        new = Identity("late")
        code, body = await post_json(
            server,
            "/auth/register",
            {
                "user_id": new.user_id,
                "username": "late",
                "public_key": new.public_key_b64,
            },
        )
        assert code == 503 and body["error"] is True, (code, body)

        await deferToThread(own_postgres.start_again)
        restarted_at = {s.ident.user_id: s.seq for s in streamers}
        await wait_for(
            lambda: all(received_from(u, n) for u, n in restarted_at.items()),
            "messages sent after the restart delivered",
            timeout=OUTAGE_TIMEOUT,
            interval=0.1,
        )
        code, body = await get(server, "/auth/users/nobody")
        assert code == 404 and body["error"] is True, (code, body)
        assert await register_and_login(server, new)
        for s in streamers:
            await s.stop()

        def settled() -> bool:
            """Every frame answered, every row received and marked delivered."""
            rows = daemon.database.messages()
            stored = Counter(row[0] for row in rows.values())
            sent = Counter(frm for frm, _ in traffic.sent.values())
            answered = all(stored[u] + refusals(tx[u]) >= sent[u] for u in sent)
            got = {(u, f["id"]) for u, c in rx.items() for f in c.received}
            return answered and all(
                (row[1], mid) in got and row[3] == "delivered"
                for mid, row in rows.items()
            )

        try:
            await wait_for(settled, "the backlog of the outage", OUTAGE_TIMEOUT, 0.2)
        except AssertionError:
            pass  # the checks below say what is missing
        assert daemon.proc.poll() is None, daemon.log_tail()

        rows = daemon.database.messages()
        log = daemon.log_text()
        # Stored rows: sent once each, by and to whom they name.
        contents = Counter(row[2] for row in rows.values())
        assert not [c for c, n in contents.items() if n > 1], "content stored twice"
        for mid, (frm, to, content, *_) in rows.items():
            assert traffic.sent.get(content) == (frm, to), f"row {mid} never sent"
        # Acknowledged = sent - refused; all of it stored.
        for user_id, client in tx.items():
            assert other_system_frames(client) == [], other_system_frames(client)
            sent = sum(1 for frm, _ in traffic.sent.values() if frm == user_id)
            stored = sum(1 for row in rows.values() if row[0] == user_id)
            refused = refusals(client)
            assert refused, f"{user_id} was never told to resend"
            assert stored + refused >= sent, (
                f"{user_id}: {sent - stored - refused} acknowledged messages lost "
                f"(sent {sent}, stored {stored}, refused {refused})"
            )
            assert stored + refused == sent or "outcome unknown" in log, (
                f"{user_id}: {stored + refused - sent} messages stored and refused"
            )
        # Every row reached its recipient, once, as stored; marked delivered.
        for user_id, client in rx.items():
            counts = Counter(f["id"] for f in client.received)
            assert not [m for m, n in counts.items() if n > 1], "duplicates"
            for f in client.received:
                frm, to, content, *_ = rows[f["id"]]
                assert (f["from"], f["to"], f["content"]) == (frm, to, content)
            missing = [
                m for m, row in rows.items() if row[1] == user_id and m not in counts
            ]
            assert not missing, f"{user_id} never got {len(missing)} stored messages"
        pending = [m for m, row in rows.items() if row[3] != "delivered"]
        assert not pending, f"{len(pending)} delivered rows not marked delivered"
        assert daemon.database.integrity_problems() == []

        assert await daemon.stop() is not None, daemon.log_tail()
        print(
            {
                "sent": len(traffic.sent),
                "stored": len(rows),
                "refused": sum(refusals(c) for c in tx.values()),
            }
        )
    finally:
        for s in streamers:
            s.running = False
        for client in clients:
            if client.protocol is not None and not client.closed:
                client.abort()
        daemon.kill_now()


@pytest_twisted.ensureDeferred
async def test_startup_waits_for_a_postgres_that_is_not_up_yet(tmp_path, own_postgres):
    pg = own_postgres.server
    url = pg.url(pg.create_database(migrated=True))
    await deferToThread(own_postgres.shut_down, "fast")
    daemon = Daemon(tmp_path, url, DK_DB_CONNECT_TIMEOUT="120")
    try:
        starting = Deferred.fromCoroutine(daemon.start(timeout=150))
        await wait_for(
            lambda: "PostgreSQL is not up yet" in daemon.log_text(),
            "dkserver to wait for PostgreSQL",
            timeout=60,
            interval=0.1,
        )
        await deferToThread(own_postgres.start_again)
        server = await starting
        assert await register_and_login(server, Identity("alice"))
        assert await daemon.stop() is not None, daemon.log_tail()
    finally:
        daemon.kill_now()
