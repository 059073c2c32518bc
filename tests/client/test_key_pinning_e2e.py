"""End to end: ``dk`` pins keys on first use and notices a server-side swap.

The swap is done the way a hostile or broken server would: bob's
``public_key`` is replaced in the server's SQLite file while it is stopped
(the server caches users), and the server is started again on the same
port and database, so pins recorded for that server URL still apply.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import stat

import pytest_twisted
from nacl.signing import SigningKey

from tests.client.dkcli import Dk, free_port
from tests.support.server import make_config, start_server, stop_server


def fingerprint(public_key_b64: str) -> str:
    """Written here from the docs, not imported: SHA256 of the raw key."""
    digest = hashlib.sha256(base64.b64decode(public_key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def identity(dk: Dk) -> dict:
    return json.loads((dk.home / "identity.json").read_text())


def pins(dk: Dk, server) -> dict:
    return json.loads((dk.home / "known_keys.json").read_text())["servers"][server.base]


def swap_key(db_path: str, dk: Dk, user_id: str) -> str:
    """Give ``user_id`` a new key, both on the server and in their home."""
    new = SigningKey.generate()
    public = base64.b64encode(bytes(new.verify_key)).decode()
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            changed = conn.execute(
                "UPDATE users SET public_key = ? WHERE user_id = ?", (public, user_id)
            ).rowcount
    finally:
        conn.close()
    assert changed == 1
    ident = identity(dk)
    ident.update(public_key=public, ed25519_seed=base64.b64encode(bytes(new)).decode())
    (dk.home / "identity.json").write_text(json.dumps(ident))
    (dk.home / "token").unlink()
    return public


@pytest_twisted.ensureDeferred
async def test_swapped_key_is_flagged_and_refused_until_dk_trust(tmp_path):
    config = make_config(tmp_path, https=f"127.0.0.1:{free_port()}")
    server = await start_server(config)
    try:
        alice, bob = Dk(server, tmp_path / "alice"), Dk(server, tmp_path / "bob")
        await alice.ok("init", "alice")
        await bob.ok("init", "bob")
        old_key = identity(bob)["public_key"]

        await bob.ok("send", "alice", "signed with the first key")
        first = await alice.ok("listen", "--json", "--count", "1", "--timeout", "20")
        [line] = first.json_lines()
        assert line["verified"] is True and "WARNING" not in first.err
        assert pins(alice, server)["bob"]["public_key"] == old_key
        assert pins(alice, server)["bob"]["how"] == "first use"
        known = alice.home / "known_keys.json"
        assert stat.S_IMODE(known.stat().st_mode) == 0o600

        await stop_server(server)
        new_key = swap_key(config.db_path, bob, "bob")
        server = await start_server(config)
        alice, bob = Dk(server, alice.home), Dk(server, bob.home)

        await bob.ok("send", "alice", "signed with the new key")

        refused = await alice.run("send", "bob", "for bob's eyes only")
        assert refused.code == 8, str(refused)
        for needle in ("'bob'", fingerprint(old_key), fingerprint(new_key)):
            assert needle in refused.err, str(refused)
        assert "dk trust bob" in refused.err and "Traceback" not in refused.err

        flagged = await alice.run("listen", "--json", "--count", "1", "--timeout", "20")
        assert flagged.code == 0, str(flagged)
        [line] = flagged.json_lines()
        assert line["content"] == "signed with the new key"
        assert line["verified"] is False and line["key_changed"] is True
        assert "WARNING" in flagged.err and "CHANGED" in flagged.err
        for needle in (fingerprint(old_key), fingerprint(new_key), "dk trust bob"):
            assert needle in flagged.err, str(flagged)
        assert pins(alice, server)["bob"]["public_key"] == old_key  # unmoved

        unasked = await alice.run("trust", "bob")  # stdin is not a terminal
        assert unasked.code == 2 and "--yes" in unasked.err, str(unasked)
        assert pins(alice, server)["bob"]["public_key"] == old_key

        trusted = await alice.ok("trust", "bob", "--yes")
        assert fingerprint(new_key) in trusted.out
        assert fingerprint(old_key) in trusted.out  # what it replaces
        pinned = pins(alice, server)["bob"]
        assert (pinned["public_key"], pinned["how"]) == (new_key, "dk trust")

        await bob.ok("send", "alice", "after trust")
        after = await alice.ok("listen", "--json", "--count", "1", "--timeout", "20")
        [line] = after.json_lines()
        assert line["content"] == "after trust" and line["verified"] is True
        assert "WARNING" not in after.err

        await alice.ok("send", "bob", "now it goes")
        # The refused message never went out: this is bob's only message,
        # and bob reads it with the new key.
        got = await bob.ok("listen", "--json", "--count", "1", "--timeout", "20")
        [line] = got.json_lines()
        assert line["content"] == "now it goes" and line["verified"] is True
        extra = await bob.run("listen", "--json", "--count", "1", "--timeout", "1")
        assert extra.code == 124 and extra.lines() == [], str(extra)
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_trust_command_errors_key_option_and_whoami_fingerprint(server, tmp_path):
    alice, bob = Dk(server, tmp_path / "alice"), Dk(server, tmp_path / "bob")
    await alice.ok("init", "alice")
    await bob.ok("init", "bob")
    bob_key = identity(bob)["public_key"]

    whoami = await bob.ok("whoami")
    assert f"fingerprint: {fingerprint(bob_key)}" in whoami.out

    unknown = await alice.run("trust", "nobody", "--yes")
    assert unknown.code == 6 and "nobody" in unknown.err, str(unknown)
    yourself = await alice.run("trust", "alice", "--yes")
    assert yourself.code == 2 and "is you" in yourself.err, str(yourself)
    for bad in ("not-base64", base64.b64encode(b"short").decode()):
        garbage = await alice.run("trust", "bob", "--key", bad, "--yes")
        assert garbage.code == 2 and "--key" in garbage.err, str(garbage)
    assert not (alice.home / "known_keys.json").exists()

    # A key got from bob directly, before any message: pinned as trusted.
    given = await alice.ok("trust", "bob", "--key", bob_key, "--yes")
    assert fingerprint(bob_key) in given.out
    assert pins(alice, server)["bob"]["how"] == "dk trust"
    again = await alice.ok("trust", "bob", "--yes")
    assert "already trusted" in again.out

    # A key the server does not give: pinned, but sending refuses.
    other = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()
    await alice.ok("trust", "bob", "--key", other, "--yes")
    refused = await alice.run("send", "bob", "hi")
    assert refused.code == 8 and fingerprint(other) in refused.err, str(refused)

    # An unreadable pin file is an error, not a fresh start.
    (alice.home / "known_keys.json").write_text("{oops")
    for argv in (("listen", "--count", "1", "--timeout", "1"), ("send", "bob", "x")):
        broken = await alice.run(*argv)
        assert broken.code == 1 and "known_keys.json" in broken.err, str(broken)
        assert "Traceback" not in broken.err
    assert (alice.home / "known_keys.json").read_text() == "{oops"
