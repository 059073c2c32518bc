"""``dkserver stats`` reports what ``GET /stats`` reports (the same query),
read beside a running server, on both backends."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.admin.admincli import dkserver, dkserver_async, sqlite_database
from tests.support.client import Identity, get, register_and_login
from tests.support.server import start_server, stop_server
from tests.support.waiting import sleep
from tests.support.ws import broadcast_frame, connect, direct_frame

pytestmark = pytest.mark.both_backends


async def _stats(server, token: str) -> dict:
    code, body = await get(server, "/stats", {"Authorization": f"Bearer {token}"})
    assert code == 200, body
    return body


@pytest_twisted.ensureDeferred
async def test_stats_match_the_running_servers_stats(backend_config, db_target):
    server = await start_server(backend_config(admin_users=frozenset({"root"})))
    try:
        root = await register_and_login(server, Identity("root"))
        alice, bob = Identity("alice"), Identity("bob")
        alice_token = await register_and_login(server, alice)
        bob_token = await register_and_login(server, bob)
        alice_ws = await connect(server, alice_token)
        bob_ws = await connect(server, bob_token)
        for i in range(3):
            alice_ws.send_json(direct_frame(alice, "bob", f"d{i}", bob.public_key_b64))
        alice_ws.send_json(broadcast_frame(alice, "hello all"))
        for _ in range(100):  # until the events are written
            served = await _stats(server, root)
            total = served["messages"]["all_time"]["total"]
            if total == 4 and served["peak_hour"] is not None:
                break
            await sleep(0.05)
        bob_ws.close()
        await bob_ws.wait_closed()
        for _ in range(100):  # until bob's session is closed
            served = await _stats(server, root)
            if served["sessions"]["open"] == 1:
                break
            await sleep(0.05)
        result = await dkserver_async("stats", "--json", "--db", db_target)
        after = await _stats(server, root)
        alice_ws.close()
        await alice_ws.wait_closed()
    finally:
        await stop_server(server)
    reported = result.json()
    for body in (served, after):
        body.pop("node")
        body.pop("live")
    assert served == after  # nothing moved while the command ran
    assert reported == served
    assert reported["messages"]["all_time"] == {
        "direct": 3,
        "broadcast": 1,
        "total": 4,
    }
    assert reported["sessions"]["count"] == 2 and reported["sessions"]["open"] == 1
    assert reported["daily_active_users"] == 2


def test_stats_text_of_an_unused_database(tmp_path):
    db = sqlite_database(tmp_path / "dk.db")
    result = dkserver("stats", "--db", db)
    assert result.rc == 0, result
    assert result.out.splitlines() == [
        "daily active users         0",
        "weekly active users        0",
        "messages, all time         0 (0 direct, 0 broadcast)",
        "messages, last 24 h        0 (0 direct, 0 broadcast)",
        "sessions                   0 (0 open)",
        "session duration, mean     -",
        "session duration, median   -",
        "session duration, longest  -",
        "peak hour (UTC)            -",
    ]


def test_stats_refuses_arguments_it_does_not_take(tmp_path):
    db = sqlite_database(tmp_path / "dk.db")
    result = dkserver("stats", "--db", db, "today")
    assert result.rc == 2 and result.out == ""
    assert result.one_error_line("dkserver stats: error: ") == (
        "dkserver stats: error: unrecognized arguments: today"
        " (see dkserver stats --help)"
    )
