"""A database written by the original Go server, served over the WebSocket.

``tests/fixtures/original-server.db`` holds two encrypted, signed direct
messages from alice to bob and a broadcast from carol, all pending (see
tests/fixtures/README.md).  After dkserver upgrades the file in place, bob
must get all three exactly as the clients sent them (timestamp text too), once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest_twisted
from twisted.internet import threads

from tests.support.client import Identity, login
from tests.support.envelope import decrypt_with, rfc3339_unix_nanos
from tests.support.paths import FIXTURES
from tests.support.server import make_config as server_config
from tests.support.server import start_server, stop_server
from tests.support.ws import connect, verify_frame


def _copy_fixture_db(tmp_path) -> None:
    for name in os.listdir(FIXTURES):
        if name.startswith("original-server.db"):
            shutil.copy(
                FIXTURES / name, tmp_path / name.replace("original-server", "dk")
            )


def _check_relayed(frame: dict, sent: dict, sender: Identity) -> None:
    assert (frame["from"], frame["to"], frame["content"]) == (
        sent["from"],
        sent["to"],
        sent["content"],
    )
    assert frame["signature"] == sent["signature"]
    # The original's rows have no client text: rendered as the original
    # renders them, which is the text the clients sent ("…Z" for "+00:00").
    assert frame["timestamp"] == sent["timestamp"]
    assert rfc3339_unix_nanos(frame["timestamp"]) == sent["unix_nanos"]
    assert verify_frame(frame, sender.public_key_b64)
    assert isinstance(frame["id"], int) and frame["id"] > 0


@pytest_twisted.ensureDeferred
async def test_original_server_pending_messages_reach_bob_once_and_verify(tmp_path):
    _copy_fixture_db(tmp_path)
    await _serves_the_fixture_once(server_config(tmp_path))


@pytest_twisted.ensureDeferred
async def test_original_server_database_ported_to_postgresql_serves_bob_once(
    tmp_path, pg_empty_url
):
    """``dkserver port-db`` of the original's file, then dkserver on PostgreSQL:
    everyone logs in, and bob gets his three messages once, verifying."""
    _copy_fixture_db(tmp_path)
    ported = await threads.deferToThread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "dkserver.cli",
            "port-db",
            str(tmp_path / "dk.db"),
            pg_empty_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ported.returncode == 0, ported.stderr
    assert "holds a verified copy" in ported.stdout
    await _serves_the_fixture_once(server_config(tmp_path, db=pg_empty_url))


async def _serves_the_fixture_once(config) -> None:
    fixture = json.loads((FIXTURES / "original-server.json").read_text())
    ids = {
        user_id: Identity.from_seed_hex(user_id, seed)
        for user_id, seed in fixture["ed25519_seeds_hex"].items()
    }
    first, second, broadcast = fixture["sent"]

    server = await start_server(config)
    try:
        bob_token = await login(server, ids["bob"])
        bob_ws = await connect(server, bob_token)
        got = await bob_ws.recv_all(3)
        await bob_ws.expect_silence(0.3)

        direct = [f for f in got if not f.get("is_broadcast")]
        broadcasts = [f for f in got if f.get("is_broadcast")]
        assert len(direct) == 2 and len(broadcasts) == 1, got
        # Direct messages first, oldest first, then the broadcast.
        assert got[:2] == direct and direct[0]["id"] < direct[1]["id"]
        for frame, sent in zip(direct, (first, second), strict=True):
            _check_relayed(frame, sent, ids["alice"])
            assert (
                decrypt_with(ids["bob"].signing_key, frame["content"])
                == (sent["plaintext"])
            )
        _check_relayed(broadcasts[0], broadcast, ids["carol"])
        assert broadcasts[0]["is_broadcast"] is True
        assert broadcasts[0]["content"] == broadcast["plaintext"]
        bob_ws.close()
        await bob_ws.wait_closed()

        # Each message reaches bob once.
        bob_again = await connect(server, bob_token)
        await bob_again.expect_silence(0.4)

        # alice gets carol's broadcast once, not her own direct messages.
        alice_token = await login(server, ids["alice"])
        alice_ws = await connect(server, alice_token)
        (only,) = await alice_ws.recv_all(1)
        await alice_ws.expect_silence(0.3)
        assert only["id"] == broadcasts[0]["id"]
        _check_relayed(only, broadcast, ids["carol"])
        alice_ws.close()
        await alice_ws.wait_closed()
        alice_again = await connect(server, alice_token)
        await alice_again.expect_silence(0.3)

        # carol does not get her own broadcast back.
        carol_ws = await connect(server, await login(server, ids["carol"]))
        await carol_ws.expect_silence(0.3)
        for ws in (bob_again, alice_again, carol_ws):
            ws.close()
            await ws.wait_closed()
    finally:
        await stop_server(server)
