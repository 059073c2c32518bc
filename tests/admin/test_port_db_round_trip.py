"""Content PostgreSQL text cannot hold, from dkserver on SQLite through
``dkserver port-db`` to dkserver on PostgreSQL, byte for byte.

SQLite keeps U+0000 in message content and PostgreSQL's ``text`` refuses it,
so dkserver stores such content escaped behind U+FFFF (``encode_content``);
port-db must write it the same way, or the copy fails (or, for content that
starts with the marker, the server would later decode it into something
else).
"""

from __future__ import annotations

import psycopg
import pytest_twisted
from twisted.internet.threads import deferToThread

from dkserver.store.engine import ESCAPED, encode_content
from tests.admin.portdb import run_port_process
from tests.support.client import Identity, login, register_and_login
from tests.support.db import db_rows
from tests.support.server import make_config, start_server, stop_server
from tests.support.waiting import wait_for
from tests.support.ws import broadcast_frame, connect, signed_frame, verify_frame

#: Direct messages to bob: a NUL, the escape marker, both, an escape lookalike.
DIRECT = [
    "nul\x00inside",
    ESCAPED + "starts with the marker",
    ESCAPED + "0 looks escaped \x00 and " + ESCAPED * 2,
    "\x00",
]
BROADCAST = "broadcast \x00 with a NUL " + ESCAPED


@pytest_twisted.ensureDeferred
async def test_nul_content_ported_is_served_by_postgresql_exactly(
    tmp_path, pg_empty_url
):
    alice, bob = Identity("alice"), Identity("bob")
    (tmp_path / "lite").mkdir()
    lite = make_config(tmp_path / "lite", message_rate=1e6, message_burst=10**6)
    server = await start_server(lite)
    try:
        alice_ws = await connect(server, await register_and_login(server, alice))
        await register_and_login(server, bob)  # registered, offline
        sent = [signed_frame(alice, "bob", text) for text in DIRECT]
        sent.append(broadcast_frame(alice, BROADCAST))
        for frame in sent:
            alice_ws.send_json(frame)
        await wait_for(
            lambda: db_rows(server, "SELECT COUNT(*) FROM messages")[0][0] == len(sent),
            "the messages stored",
        )
        alice_ws.close()
        await alice_ws.wait_closed()
    finally:
        await stop_server(server)
    contents = [c for (c,) in db_rows(lite, "SELECT content FROM messages ORDER BY id")]
    assert contents == [*DIRECT, BROADCAST]  # SQLite holds them as sent

    ported = await deferToThread(run_port_process, lite.db_path, pg_empty_url)

    assert ported.rc == 0, ported.err
    assert "verify messages: 5 rows" in ported.out
    with psycopg.connect(pg_empty_url) as pg:
        stored = [c for (c,) in pg.execute("SELECT content FROM messages ORDER BY id")]
    assert stored == [encode_content(c) for c in contents]  # as dkserver writes
    assert all("\x00" not in c for c in stored)

    (tmp_path / "pg").mkdir()
    server = await start_server(make_config(tmp_path / "pg", pg_empty_url))
    try:
        bob_ws = await connect(server, await login(server, bob))
        got = await bob_ws.recv_all(len(sent))
        assert [m["content"] for m in got] == [*DIRECT, BROADCAST]
        for frame in got:
            assert verify_frame(frame, alice.public_key_b64)
        await bob_ws.expect_silence(0.2)
        bob_ws.close()
        await bob_ws.wait_closed()
    finally:
        await stop_server(server)
