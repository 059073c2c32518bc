"""End to end: the ``dk`` CLI (a subprocess) against a running dkserver."""

from __future__ import annotations

import base64
import json
import socket
import stat
import time

import pytest
import pytest_twisted

from tests.client.dkcli import Dk, sleep, wait_online
from tests.support.client import get, post_json


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def init_pair(server, tmp_path) -> tuple[Dk, Dk]:
    alice, bob = Dk(server, tmp_path / "alice"), Dk(server, tmp_path / "bob")
    await alice.ok("init", "alice", "--username", "Alice")
    await bob.ok("init", "bob")
    return alice, bob


@pytest_twisted.ensureDeferred
async def test_init_send_listen_shows_message_decrypted_and_verified(server, tmp_path):
    alice, bob = await init_pair(server, tmp_path)
    identity = alice.home / "identity.json"
    assert mode(identity) == 0o600 and mode(alice.home / "token") == 0o600
    assert json.loads(identity.read_text())["user_id"] == "alice"

    listening = bob.start("listen", "--json", "--count", "1", "--timeout", "20")
    await wait_online(server, "bob")
    sent = await alice.ok("send", "bob", "hello")
    result = await listening

    assert result.code == 0, str(result)
    [line] = result.json_lines()
    assert line["content"] == "hello"
    assert line["verified"] is True
    assert line["from"] == "alice" and line["to"] == "bob"
    assert isinstance(line["id"], int) and isinstance(line["timestamp"], str)
    assert line["encrypted"] is True
    assert "hello" not in sent.out  # nothing chatty on stdout for scripts

    # The server stored ciphertext only.
    code, record = await get(server, "/auth/users/alice")
    assert code == 200 and record["username"] == "Alice"


@pytest.mark.both_backends  # the client through stored messages
@pytest_twisted.ensureDeferred
async def test_offline_message_and_broadcast_arrive_on_next_listen(server, tmp_path):
    alice, bob = await init_pair(server, tmp_path)
    await alice.ok("send", "bob", "while you were away ✓")
    await alice.ok("broadcast", "hello everyone")

    result = await bob.ok("listen", "--json", "--count", "2", "--timeout", "20")
    direct, broadcast = result.json_lines()
    assert direct["content"] == "while you were away ✓" and direct["verified"]
    assert broadcast["content"] == "hello everyone" and broadcast["verified"]
    assert broadcast["broadcast"] is True and broadcast["to"] == "broadcast"

    # Shown once: nothing more the next time.
    again = await bob.run("listen", "--json", "--count", "1", "--timeout", "1.5")
    assert again.code == 124 and again.lines() == [], str(again)


@pytest_twisted.ensureDeferred
async def test_listen_text_output_and_stdin_message(server, tmp_path):
    alice, bob = await init_pair(server, tmp_path)
    await alice.ok("send", "bob", stdin=b"from stdin\n")
    result = await bob.ok("listen", "--count", "1", "--timeout", "20")
    assert "alice: from stdin" in result.out, str(result)
    assert "UNVERIFIED" not in result.out


@pytest_twisted.ensureDeferred
async def test_users_and_describe(server, tmp_path):
    alice, bob = await init_pair(server, tmp_path)
    users = await alice.ok("users", "--json")
    listed = json.loads(users.out)
    assert sorted(listed["online"] + listed["offline"]) == ["alice", "bob"]
    text = await alice.ok("users")
    assert "offline" in text.out and "alice" in text.out

    await alice.ok("describe", "knows Go", "knows Twisted")
    code, body = await get(server, "/user/descriptions/alice")
    assert (code, body) == (200, ["knows Go", "knows Twisted"])
    mine = await alice.ok("describe")
    assert mine.lines() == ["knows Go", "knows Twisted"]
    theirs = await bob.ok("describe", "--user", "alice", "--json")
    assert json.loads(theirs.out) == ["knows Go", "knows Twisted"]

    listening = bob.start("listen", "--count", "1", "--timeout", "20")
    await wait_online(server, "bob")
    users = json.loads((await alice.ok("users", "--json")).out)
    assert "bob" in users["online"]
    await alice.ok("broadcast", "anyone?")
    result = await listening
    assert result.code == 0 and "alice (broadcast): anyone?" in result.out, str(result)


@pytest_twisted.ensureDeferred
async def test_logs_in_on_demand_when_token_missing_or_invalid(server, tmp_path):
    alice, bob = await init_pair(server, tmp_path)
    token_file = alice.home / "token"

    token_file.unlink()
    await alice.ok("describe", "needs a token")
    assert token_file.exists() and mode(token_file) == 0o600

    # A token that looks current but the server refuses (WebSocket 401).
    def b64url(obj) -> str:
        raw = json.dumps(obj).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    forged = ".".join(
        [
            b64url({"alg": "HS256", "typ": "JWT"}),
            b64url({"user_id": "alice", "exp": int(time.time()) + 3600}),
            "c2lnbmF0dXJl",
        ]
    )
    token_file.write_text(forged)
    await alice.ok("broadcast", "after a refused token")
    assert token_file.read_text().strip() != forged
    token_file.write_text(forged)
    await alice.ok("describe", "REST 401 too")

    result = await alice.ok("login")
    assert "Logged in as 'alice'" in result.out
    result = await bob.ok("listen", "--json", "--count", "1", "--timeout", "20")
    assert result.json_lines()[0]["content"] == "after a refused token"


@pytest_twisted.ensureDeferred
async def test_helpful_errors_and_exit_codes(server, tmp_path):
    alice, _ = await init_pair(server, tmp_path)

    unknown = await alice.run("send", "nobody", "hi")
    assert unknown.code == 6 and "nobody" in unknown.err, str(unknown)
    assert "Traceback" not in unknown.err

    stranger = Dk(server, tmp_path / "empty")
    missing = await stranger.run("send", "alice", "hi")
    assert missing.code == 3 and "dk init" in missing.err, str(missing)

    taken = await Dk(server, tmp_path / "other").run("init", "alice")
    assert taken.code == 1 and "already taken" in taken.err, str(taken)
    assert not (tmp_path / "other" / "identity.json").exists()

    bad_id = await stranger.run("init", "has space")
    assert bad_id.code == 2 and "user id" in bad_id.err, str(bad_id)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = await alice.run(
        "--server", f"https://127.0.0.1:{closed_port}", "send", "bob", "hi"
    )
    assert down.code == 4 and "cannot reach" in down.err, str(down)

    untrusted = await alice.run("--cacert", "/dev/null", "users")
    assert untrusted.code != 0 and "Traceback" not in untrusted.err


@pytest_twisted.ensureDeferred
async def test_init_again_with_the_same_key_is_idempotent(server, tmp_path):
    alice, _ = await init_pair(server, tmp_path)
    first = json.loads((alice.home / "identity.json").read_text())
    again = await alice.ok("init", "alice")
    assert "already registered" in again.out
    assert json.loads((alice.home / "identity.json").read_text()) == first


@pytest_twisted.ensureDeferred
async def test_serve_forward_answers_direct_message_queries(server, tmp_path):
    alice, _ = await init_pair(server, tmp_path)
    serving = alice.start("serve-forward", "--count", "2", "tr a-z A-Z")
    await wait_online(server, "alice")

    token = (alice.home / "token").read_text().strip()
    code, body = await post_json(
        server,
        "/direct-message/",
        {"type": "forward", "query": 'what "is" this?'},
        {"Authorization": f"Bearer {token}"},
    )
    assert (code, body) == (200, {"success": True, "answer": 'WHAT "IS" THIS?'})
    asked = await alice.ok("ask", "second one")
    assert asked.out.strip() == "SECOND ONE"
    result = await serving
    assert result.code == 0, str(result)


@pytest.mark.both_backends  # the client through stored messages
@pytest_twisted.ensureDeferred
async def test_messages_received_by_send_are_kept_for_listen(server, tmp_path):
    alice, bob = await init_pair(server, tmp_path)
    await alice.ok("send", "bob", "pending for bob")
    # bob's send connection receives the pending message; listen shows it.
    await bob.ok("send", "alice", "hi alice")
    await sleep(0.1)
    result = await bob.ok("listen", "--json", "--count", "1", "--timeout", "3")
    [line] = result.json_lines()
    assert line["content"] == "pending for bob" and line["verified"] is True
