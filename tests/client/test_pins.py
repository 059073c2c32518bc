"""Trust on first use: the client pins peers' keys and notices a swapped one.

The server is an in-memory fake of ``GET /auth/users/{id}`` (the only REST
call involved); the crypto, the files in home and the Client are real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat

import pytest
from nacl.signing import SigningKey

from dkclient import crypto
from dkclient.account import Client
from dkclient.api import ApiError
from dkclient.exits import EXIT_KEY_CHANGED
from dkclient.keys import Home, Identity
from dkclient.pins import (
    FIRST_USE,
    TRUSTED,
    KeyChanged,
    KnownKeys,
    KnownKeysError,
    fingerprint,
)

SERVER = "https://dk.test:8443"


class FakeApi:
    """The server's user records; ``keys`` can be swapped under the client."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.server = SERVER
        self.keys = keys
        self.fetches: list[str] = []

    def get_user(self, user_id: str) -> dict:
        self.fetches.append(user_id)
        if user_id not in self.keys:
            raise ApiError(404, "user not found")
        return {"user_id": user_id, "public_key": self.keys[user_id]}


def pub(key: SigningKey) -> str:
    return crypto.b64e(bytes(key.verify_key))


def make_client(tmp_path, user: str, api: FakeApi, identity=None) -> Client:
    """A client with its home in ``tmp_path / user`` (the same for every
    client of one user, like successive ``dk`` runs)."""
    client = Client(Home(tmp_path / user), identity=identity or Identity.generate(user))
    client._api = api
    return client


def signed_by(key: SigningKey, sender: str, to: str, content: str) -> dict:
    """A received message object signed with ``key`` in ``sender``'s name."""
    text, nanos = crypto.now_timestamp()
    return {
        "id": 1,
        "from": sender,
        "to": to,
        "timestamp": text,
        "content": content,
        "status": "pending",
        "signature": crypto.sign_message(key, sender, to, nanos, content),
    }


@pytest.fixture
def keys():
    return {name: SigningKey.generate() for name in ("bob", "bob2", "mallory")}


@pytest.fixture
def api(keys):
    return FakeApi({"bob": pub(keys["bob"]), "mallory": pub(keys["mallory"])})


def test_fingerprint_is_sha256_of_the_raw_key_like_ssh(keys):
    key = pub(keys["bob"])
    digest = hashlib.sha256(bytes(keys["bob"].verify_key)).digest()
    expected = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    assert fingerprint(key) == expected and len(expected) == 7 + 43
    assert fingerprint(pub(keys["bob2"])) != expected


def test_known_keys_file_is_private_per_server_and_survives_restart(tmp_path, keys):
    path = tmp_path / "home" / "known_keys.json"
    pins = KnownKeys(path)
    first = pins.pin_first(SERVER, "bob", pub(keys["bob"]))
    assert first.how == FIRST_USE
    # A second first use keeps the first key.
    assert pins.pin_first(SERVER, "bob", pub(keys["bob2"])) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    again = KnownKeys(path)
    assert again.get(SERVER, "bob") == first
    assert again.get("https://other.test", "bob") is None  # another server
    on_disk = json.loads(path.read_text())
    assert on_disk["servers"][SERVER]["bob"]["public_key"] == pub(keys["bob"])


def test_known_keys_sees_a_pin_written_by_another_process(tmp_path, keys):
    path = tmp_path / "known_keys.json"
    listening, trusting = KnownKeys(path), KnownKeys(path)
    listening.pin_first(SERVER, "bob", pub(keys["bob"]))
    trusting.pin(SERVER, "bob", pub(keys["bob2"]), TRUSTED)  # same file size
    pin = listening.get(SERVER, "bob")
    assert pin is not None and pin.public_key == pub(keys["bob2"])
    assert pin.how == TRUSTED
    # And a change by the first keeps the other's pin.
    listening.pin_first(SERVER, "carol", pub(keys["mallory"]))
    assert set(KnownKeys(path).pins(SERVER)) == {"bob", "carol"}


@pytest.mark.parametrize(
    "text",
    ["{not json", "[]", '{"servers": {"x": []}}', '{"servers": {"x": {"bob": {}}}}'],
)
def test_unreadable_known_keys_is_an_error_not_a_fresh_start(tmp_path, keys, text):
    path = tmp_path / "known_keys.json"
    path.write_text(text)
    with pytest.raises(KnownKeysError, match=r"known_keys\.json"):
        KnownKeys(path).pin_first(SERVER, "bob", pub(keys["bob"]))
    assert path.read_text() == text  # nothing re-pinned over it


def test_first_message_pins_the_senders_key_and_verifies(tmp_path, keys, api):
    alice = make_client(tmp_path, "alice", api)
    message = alice.open_frame(signed_by(keys["bob"], "bob", "broadcast", "hi"))
    assert message.verified and message.key_change is None
    pin = alice.pinned("bob")
    assert pin is not None and pin.public_key == pub(keys["bob"])
    assert pin.how == FIRST_USE
    # A new client (the next dk run) uses the pin, not a refetched key.
    api.keys["bob"] = pub(keys["bob2"])
    later = make_client(tmp_path, "alice", api, alice.identity)
    assert later.open_frame(signed_by(keys["bob"], "bob", "broadcast", "x")).verified


def test_swapped_key_shows_message_unverified_with_both_keys(tmp_path, keys, api):
    alice = make_client(tmp_path, "alice", api)
    alice.open_frame(signed_by(keys["bob"], "bob", "broadcast", "before"))

    api.keys["bob"] = pub(keys["bob2"])  # the server now gives another key
    frame = signed_by(keys["bob2"], "bob", "broadcast", "after")
    message = alice.open_frame(frame)

    assert message.verified is False and message.content == "after"
    change = message.key_change
    assert change is not None and change.user_id == "bob"
    assert change.pinned.public_key == pub(keys["bob"])
    assert change.current == pub(keys["bob2"])
    assert "new key" in message.error and "dk trust bob" in message.error
    assert message.to_json()["key_changed"] is True
    warning = "\n".join(change.warning_lines())
    assert "'bob'" in warning and "CHANGED" in warning
    assert fingerprint(pub(keys["bob"])) in warning
    assert fingerprint(pub(keys["bob2"])) in warning
    assert "dk trust bob" in warning
    # The pin did not move.
    assert alice.pinned("bob").public_key == pub(keys["bob"])


def test_forgery_with_unchanged_server_key_is_not_a_key_change(tmp_path, keys, api):
    alice = make_client(tmp_path, "alice", api)
    forged = signed_by(keys["mallory"], "bob", "broadcast", "it is me, bob")
    message = alice.open_frame(forged)
    assert message.verified is False and message.key_change is None
    assert message.error == "signature does not verify"


def test_direct_message_with_a_swapped_key_still_decrypts_but_unverified(
    tmp_path, keys, api
):
    alice = make_client(tmp_path, "alice", api)
    api.keys["alice"] = alice.identity.public_key_b64
    alice.trusted_key("bob")  # pinned on first use
    api.keys["bob"] = pub(keys["bob2"])
    envelope = crypto.encrypt(alice.identity.public_key_b64, "secret")
    message = alice.open_frame(signed_by(keys["bob2"], "bob", "alice", envelope))
    assert message.encrypted and message.content == "secret"
    assert message.verified is False and message.key_change is not None


def test_sending_refuses_a_changed_recipient_key_until_trusted(tmp_path, keys, api):
    alice = make_client(tmp_path, "alice", api)
    first = alice.direct_frame("bob", "one")  # pins bob's key on first use
    assert crypto.decrypt(keys["bob"], first["content"]) == "one"

    api.keys["bob"] = pub(keys["bob2"])
    fresh = make_client(tmp_path, "alice", api, alice.identity)  # the next run
    with pytest.raises(KeyChanged) as raised:
        fresh.direct_frame("bob", "two")
    assert raised.value.exit_code == EXIT_KEY_CHANGED == 8
    assert raised.value.change.current == pub(keys["bob2"])
    assert "dk trust bob" in str(raised.value)

    pin = fresh.trust("bob", pub(keys["bob2"]))
    assert pin.how == TRUSTED
    frame = fresh.direct_frame("bob", "three")
    assert crypto.decrypt(keys["bob2"], frame["content"]) == "three"
    # and bob2's messages verify from now on
    assert fresh.open_frame(signed_by(keys["bob2"], "bob", "broadcast", "ok")).verified


def test_trusting_a_key_the_server_does_not_give_still_refuses_to_send(
    tmp_path, keys, api
):
    """``dk trust --key``: the pin wins over the server, both ways."""
    alice = make_client(tmp_path, "alice", api)
    alice.trust("bob", pub(keys["bob2"]))
    with pytest.raises(KeyChanged):
        alice.recipient_key("bob")
    message = alice.open_frame(signed_by(keys["bob"], "bob", "broadcast", "x"))
    assert message.verified is False and message.key_change is not None


def test_trust_rejects_a_key_that_is_not_an_ed25519_key(tmp_path, api):
    alice = make_client(tmp_path, "alice", api)
    for bad in ("not base64!", crypto.b64e(b"short")):
        with pytest.raises(crypto.CryptoError):
            alice.trust("bob", bad)
    assert alice.pinned("bob") is None


def test_own_messages_verify_with_own_key_not_the_servers(tmp_path, keys, api):
    alice = make_client(tmp_path, "alice", api)
    api.keys["alice"] = pub(keys["mallory"])  # a server lying about us
    own = signed_by(alice.identity.signing_key, "alice", "broadcast", "me")
    assert alice.open_frame(own).verified
    spoofed = signed_by(keys["mallory"], "alice", "broadcast", "not me")
    assert alice.open_frame(spoofed).verified is False
    assert alice.recipient_key("alice") == alice.identity.public_key_b64
    assert alice.pinned("alice") is None and "alice" not in api.fetches


def test_unknown_sender_is_unverified_and_not_pinned(tmp_path, keys, api):
    alice = make_client(tmp_path, "alice", api)
    message = alice.open_frame(signed_by(keys["bob"], "zed", "broadcast", "?"))
    assert message.verified is False and "unknown" in message.error
    assert alice.pinned("zed") is None


def test_unreadable_known_keys_stops_opening_messages(tmp_path, keys, api):
    """Not "unverified": that would look like any forgery, and hide the cause."""
    alice = make_client(tmp_path, "alice", api)
    alice.home.path.mkdir(parents=True)
    alice.home.known_keys_path.write_text("{oops")
    with pytest.raises(KnownKeysError):
        alice.open_frame(signed_by(keys["bob"], "bob", "broadcast", "hi"))
    with pytest.raises(KnownKeysError):
        alice.direct_frame("bob", "hi")
