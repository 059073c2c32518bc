"""SIGHUP to the real ``twistd dkserver`` reloads its certificate and key:
the process keeps running, an open WebSocket keeps working, new connections
get the new certificate, and a broken pair is refused with the old one kept.

The file poll is set to an hour here, so only the signal can do it.
"""

from __future__ import annotations

import signal

import pytest_twisted

from tests.reliability.daemon import Daemon
from tests.support.client import Identity, register_and_login
from tests.support.tlsclient import handshake_in_thread, replace_file, write_pair
from tests.support.waiting import sleep
from tests.support.ws import broadcast_frame, connect, now_timestamp


async def _fingerprint_becomes(port: int, expected: str, limit: float = 15.0) -> str:
    waited = 0.0
    while True:
        seen = (await handshake_in_thread(port)).fingerprint
        if seen == expected or waited >= limit:
            return seen
        await sleep(0.1)
        waited += 0.1


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_the_certificate_without_dropping_websockets(tmp_path):
    daemon = Daemon(tmp_path, DK_TLS_RELOAD_INTERVAL="3600")
    try:
        handle = await daemon.start()
        old = (await handshake_in_thread(daemon.port)).fingerprint
        alice, bob = Identity("alice"), Identity("bob")
        alice_ws = await connect(handle, await register_and_login(handle, alice))
        bob_ws = await connect(handle, await register_and_login(handle, bob))

        new = write_pair(daemon.cert, daemon.key)
        daemon.signal(signal.SIGHUP)
        assert await _fingerprint_becomes(daemon.port, new) == new
        assert new != old
        assert daemon.proc.poll() is None, daemon.log_tail()
        assert f"reloaded certificate CN=localhost (SHA-256 {new})" in (
            daemon.log_text()
        )

        alice_ws.send_json(broadcast_frame(alice, "still here", now_timestamp()))
        got = await bob_ws.recv()
        assert (got["from"], got["content"]) == ("alice", "still here")

        # A broken replacement: refused, logged, the new pair still served.
        replace_file(daemon.cert, b"not a certificate\n")
        daemon.signal(signal.SIGHUP)
        waited = 0.0
        while "not reloading the certificate" not in daemon.log_text():
            assert waited < 15, daemon.log_tail()
            await sleep(0.1)
            waited += 0.1
        assert (await handshake_in_thread(daemon.port)).fingerprint == new
        assert daemon.proc.poll() is None
        alice_ws.close()
        bob_ws.close()
    finally:
        await daemon.stop()
        daemon.kill_now()
