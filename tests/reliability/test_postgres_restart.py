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

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from tests.reliability.daemon import Daemon
from tests.reliability.streaming import (
    Streamer,
    Traffic,
    check_nothing_lost,
    open_clients,
    outage_settled,
    refusals,
)
from tests.support.client import Identity, get, post_json, register_and_login
from tests.support.waiting import wait_for

#: How long dkserver may take to notice an outage, and to recover from one:
#: generous for a loaded machine, not a performance bound.
OUTAGE_TIMEOUT = 20.0


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

        settled = outage_settled(daemon.database.messages, traffic, tx, rx)
        try:
            await wait_for(settled, "the backlog of the outage", OUTAGE_TIMEOUT, 0.2)
        except AssertionError:
            pass  # the checks below say what is missing
        assert daemon.proc.poll() is None, daemon.log_tail()

        rows = daemon.database.messages()
        log = daemon.log_text()
        check_nothing_lost(rows, traffic, tx, rx, log)
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
