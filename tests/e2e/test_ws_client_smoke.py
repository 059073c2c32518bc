"""Smoke test: the tests.support.ws client against the real /ws endpoint."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.support.client import Identity, register_and_login
from tests.support.envelope import decrypt_with
from tests.support.ws import HandshakeRefused, connect, direct_frame, verify_frame

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends


@pytest_twisted.ensureDeferred
async def test_direct_message_between_two_clients(server):
    alice, bob = Identity("alice"), Identity("bob")
    alice_ws = await connect(server, await register_and_login(server, alice))
    bob_ws = await connect(server, await register_and_login(server, bob))
    assert (alice_ws.user_id, bob_ws.user_id) == ("alice", "bob")

    sent = direct_frame(alice, "bob", "hi bob ✓", bob.public_key_b64)
    alice_ws.send_json(sent)

    got = await bob_ws.recv()
    assert {k: got[k] for k in ("from", "to", "content")} == {
        k: sent[k] for k in ("from", "to", "content")
    }
    assert isinstance(got["id"], int)
    assert verify_frame(got, alice.public_key_b64)
    assert decrypt_with(bob.signing_key, got["content"]) == "hi bob ✓"

    await alice_ws.expect_silence(0.2)
    alice_ws.close()
    bob_ws.close()
    assert (await alice_ws.wait_closed())[0] == 1000
    assert (await bob_ws.wait_closed())[0] == 1000


@pytest_twisted.ensureDeferred
async def test_bad_token_is_refused(server):
    with pytest.raises(HandshakeRefused) as refused:
        await connect(server, "not-a-jwt")
    assert refused.value.status_code == 401
