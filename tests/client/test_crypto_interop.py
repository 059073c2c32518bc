"""The library's envelope, signatures and timestamps against an independent
implementation written from PROTOCOL.md (tests/support/envelope.py) and the
frames real original clients sent (tests/fixtures/original-server.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from dkclient import crypto
from dkclient.account import Client, forward_query
from dkclient.keys import Home, Identity
from dkserver.ws import frames as server_frames
from tests.support import envelope as independent

FIXTURE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "original-server.json").read_text()
)
SEEDS = {
    k: SigningKey(bytes.fromhex(v)) for k, v in FIXTURE["ed25519_seeds_hex"].items()
}


def public_b64(user: str) -> str:
    return crypto.b64e(bytes(SEEDS[user].verify_key))


def client_of(user: str, tmp_path) -> Client:
    ident = Identity(user, SEEDS[user], user, "https://dk.invalid")
    client = Client(Home(tmp_path / user), identity=ident)
    for other in SEEDS:  # as if fetched from GET /auth/users/{id}
        client._keys[other] = public_b64(other)
    return client


def test_library_envelope_opens_with_independent_implementation():
    text = "héllo bob ✓ " * 50
    envelope = crypto.encrypt(public_b64("bob"), text)
    assert set(json.loads(envelope)) == set(independent.ENVELOPE_FIELDS)
    assert independent.decrypt_with(SEEDS["bob"], envelope) == text


def test_independent_envelope_opens_with_library():
    envelope = independent.encrypt_for(public_b64("bob"), "from the other side")
    assert crypto.decrypt(SEEDS["bob"], envelope) == "from the other side"


def test_envelope_field_sizes_match_protocol():
    env = json.loads(crypto.encrypt(public_b64("carol"), "x"))
    sizes = {k: len(crypto.b64d(v)) for k, v in env.items()}
    assert sizes["ephemeral_public_key"] == 32
    assert sizes["key_nonce"] == 24
    assert sizes["encrypted_key"] == 32 + 16  # box MAC
    assert sizes["data_nonce"] == 12
    assert sizes["encrypted_content"] == 1 + 16  # GCM tag


def test_envelope_for_someone_else_or_tampered_does_not_open():
    envelope = crypto.encrypt(public_b64("bob"), "secret")
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt(SEEDS["carol"], envelope)
    env = json.loads(envelope)
    data = bytearray(crypto.b64d(env["encrypted_content"]))
    data[0] ^= 1
    env["encrypted_content"] = crypto.b64e(bytes(data))
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt(SEEDS["bob"], json.dumps(env))
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt(SEEDS["bob"], "plain text")


def test_x25519_derivation_matches_independent():
    for key in SEEDS.values():
        ours = crypto.x25519_private_from(key)
        theirs = independent.x25519_private_from(key)
        assert bytes(ours) == bytes(theirs)


@pytest.mark.parametrize("sent", FIXTURE["sent"], ids=lambda s: s["timestamp"])
def test_original_client_frames_verify_and_decrypt(sent):
    assert crypto.parse_timestamp(sent["timestamp"]) == sent["unix_nanos"]
    assert crypto.verify_frame(sent, public_b64(sent["from"]))
    if sent["to"] == "bob":
        assert crypto.decrypt(SEEDS["bob"], sent["content"]) == sent["plaintext"]
    forged = dict(sent, content=sent["content"] + " ")
    assert not crypto.verify_frame(forged, public_b64(sent["from"]))
    assert not crypto.verify_frame(
        sent, public_b64("carol" if sent["from"] != "carol" else "alice")
    )


@pytest.mark.parametrize("sent", FIXTURE["sent"], ids=lambda s: s["timestamp"])
def test_client_opens_original_frames_as_delivered(sent, tmp_path):
    frame = {"id": 7, **{k: sent[k] for k in ("from", "to", "timestamp", "content")}}
    frame.update(signature=sent["signature"], status="pending")
    if sent["to"] == "broadcast":
        frame["is_broadcast"] = True
    message = client_of("bob", tmp_path).open_frame(frame)
    assert message.verified is True, message.error
    assert message.content == sent["plaintext"]
    assert message.kind == ("broadcast" if sent["to"] == "broadcast" else "direct")
    assert message.encrypted is (sent["to"] == "bob")


def test_client_frames_verify_and_decrypt_with_independent(tmp_path):
    alice = client_of("alice", tmp_path)
    frame = alice.direct_frame("bob", "to bob")
    nanos = independent.rfc3339_unix_nanos(frame["timestamp"])
    assert independent.verify_message(
        public_b64("alice"),
        "alice",
        "bob",
        nanos,
        frame["content"],
        frame["signature"],
    )
    assert independent.decrypt_with(SEEDS["bob"], frame["content"]) == "to bob"

    broadcast = alice.broadcast_frame("to all")
    assert broadcast["is_broadcast"] is True and broadcast["content"] == "to all"
    assert independent.verify_message(
        public_b64("alice"),
        "alice",
        "broadcast",
        independent.rfc3339_unix_nanos(broadcast["timestamp"]),
        "to all",
        broadcast["signature"],
    )
    # and bob's client accepts both
    bob = client_of("bob", tmp_path)
    assert bob.open_frame(frame).content == "to bob"
    assert bob.open_frame(frame).verified
    assert bob.open_frame(broadcast).verified


def test_independent_signature_verifies_with_library():
    sig = independent.sign_message(SEEDS["carol"], "carol", "bob", 123456789, "c")
    assert crypto.verify_message(
        public_b64("carol"), "carol", "bob", 123456789, "c", sig
    )
    assert not crypto.verify_message(
        public_b64("carol"), "carol", "bob", 123456788, "c", sig
    )


def test_unsigned_or_unknown_sender_is_not_verified(tmp_path):
    bob = client_of("bob", tmp_path)
    frame = client_of("alice", tmp_path).direct_frame("bob", "x")
    unsigned = dict(frame)
    del unsigned["signature"]
    assert bob.open_frame(unsigned).verified is False
    spoofed = dict(frame, **{"from": "carol"})
    message = bob.open_frame(spoofed)
    assert message.verified is False and message.content == "x"


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-26T01:45:42.123456789-03:00",
        "2026-11-26T04:45:43Z",
        "2024-02-29T23:59:59.5+05:30",
        "1970-01-01T00:00:00.000000001Z",
        "0001-01-01T00:00:00Z",
        "2026-11-26 01:45:42.1-00:00",
    ],
)
def test_timestamps_parse_exactly_like_independent(text):
    assert crypto.parse_timestamp(text) == independent.rfc3339_unix_nanos(text)


@pytest.mark.parametrize("offset", [0, 19800, -10800, -34200])
def test_timestamp_format_round_trips(offset):
    ns = 1795668342123456789
    text = crypto.format_timestamp(ns, offset)
    assert crypto.parse_timestamp(text) == ns
    assert text == independent.format_rfc3339(ns, offset // 60)


def test_timestamp_truncates_beyond_nanoseconds_and_rejects_garbage():
    assert (
        crypto.parse_timestamp("2026-01-01T00:00:00.1234567899Z") % 10**9 == 123456789
    )
    for bad in ("2026-02-30T00:00:00Z", "yesterday", "2026-01-01T00:00:00", None):
        with pytest.raises(crypto.CryptoError):
            crypto.parse_timestamp(bad)


def test_now_timestamp_names_the_signed_instant():
    text, ns = crypto.now_timestamp()
    assert crypto.parse_timestamp(text) == ns


def test_forward_shapes_match_what_the_server_speaks(tmp_path):
    alice = client_of("alice", tmp_path)
    request = server_frames.forward_request_content('a "query"\n')
    assert forward_query(request) == 'a "query"\n'
    answer = alice.forward_answer_frame('the "answer"')
    assert answer["is_forward_message"] is True and answer["to"] == "alice"
    assert server_frames.forward_answer_text(answer["content"]) == 'the "answer"'
    outer = json.loads(answer["content"])
    assert outer["type"] == "forward_response"
    assert json.loads(outer["message"]) == {
        "type": "forward_response",
        "message": 'the "answer"',
    }
    frame = {
        "id": 0,
        "from": "alice",
        "to": "alice",
        "timestamp": "2026-01-01T00:00:00Z",
        "content": request,
        "status": "pending",
        "is_forward_message": True,
    }
    message = alice.open_frame(frame)
    assert message.kind == "forward" and message.content == 'a "query"\n'
