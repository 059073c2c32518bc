"""tests.support.envelope against the original server's fixture frames."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.exceptions import InvalidTag
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from tests.support.envelope import (
    ENVELOPE_FIELDS,
    b64d,
    b64e,
    decrypt_with,
    encrypt_for,
    format_rfc3339,
    rfc3339_unix_nanos,
    sign_message,
    signing_bytes,
    verify_message,
    x25519_private_from,
)
from tests.support.paths import FIXTURES

FIXTURE = json.loads((FIXTURES / "original-server.json").read_text())
KEYS = {
    name: SigningKey(bytes.fromhex(seed))
    for name, seed in FIXTURE["ed25519_seeds_hex"].items()
}
SENT = FIXTURE["sent"]
DIRECT = [frame for frame in SENT if frame["to"] != "broadcast"]


def public_b64(name: str) -> str:
    return b64e(bytes(KEYS[name].verify_key))


def test_fixture_shape():
    assert len(DIRECT) == 2
    for frame in DIRECT:
        envelope = json.loads(frame["content"])
        assert tuple(envelope) == ENVELOPE_FIELDS
        raw = {name: b64d(value) for name, value in envelope.items()}
        assert len(raw["ephemeral_public_key"]) == 32
        assert len(raw["key_nonce"]) == 24
        assert len(raw["encrypted_key"]) == 48  # K (32) + Poly1305 tag, no nonce
        assert len(raw["data_nonce"]) == 12
        assert len(raw["encrypted_content"]) == len(frame["plaintext"].encode()) + 16


@pytest.mark.parametrize("frame", DIRECT, ids=lambda f: f["timestamp"])
def test_fixture_direct_messages_decrypt_for_bob(frame):
    assert decrypt_with(KEYS["bob"], frame["content"]) == frame["plaintext"]


@pytest.mark.parametrize("frame", DIRECT, ids=lambda f: f["timestamp"])
def test_fixture_direct_messages_do_not_decrypt_for_carol(frame):
    with pytest.raises(CryptoError):
        decrypt_with(KEYS["carol"], frame["content"])


@pytest.mark.parametrize("frame", SENT, ids=lambda f: f["timestamp"])
def test_fixture_timestamps_and_signatures(frame):
    nanos = rfc3339_unix_nanos(frame["timestamp"])
    assert nanos == frame["unix_nanos"]
    args = (frame["from"], frame["to"])
    pub = public_b64(frame["from"])
    assert verify_message(pub, *args, nanos, frame["content"], frame["signature"])
    # Any change breaks it: one nanosecond, one content byte, another key.
    sig = frame["signature"]
    assert not verify_message(pub, *args, nanos + 1, frame["content"], sig)
    assert not verify_message(pub, *args, nanos - 1, frame["content"], sig)
    assert not verify_message(pub, *args, nanos, frame["content"] + " ", sig)
    assert not verify_message(public_b64("bob"), *args, nanos, frame["content"], sig)
    assert not verify_message(pub, *args, nanos, frame["content"], "not base64!")


def test_sign_and_verify_round_trip():
    key = SigningKey.generate()
    pub = b64e(bytes(key.verify_key))
    sig = sign_message(key, "a", "b", 1795668342123456789, "héllo")
    assert verify_message(pub, "a", "b", 1795668342123456789, "héllo", sig)
    assert not verify_message(pub, "a", "c", 1795668342123456789, "héllo", sig)
    assert signing_bytes("a", "b", 5, "x|y") == b"a|b|5|x|y"


def test_envelope_round_trip_unicode():
    bob = SigningKey.generate()
    plaintext = "héllo 👋 — ünïcødé\n" * 3
    envelope = encrypt_for(b64e(bytes(bob.verify_key)), plaintext)
    assert " " not in envelope
    assert tuple(json.loads(envelope)) == ENVELOPE_FIELDS
    assert decrypt_with(bob, envelope) == plaintext
    # Fresh randomness every time.
    again = encrypt_for(b64e(bytes(bob.verify_key)), plaintext)
    assert again != envelope
    assert decrypt_with(bob, again) == plaintext


def test_envelope_wrong_key_and_tampering_fail():
    bob = SigningKey.generate()
    envelope = encrypt_for(b64e(bytes(bob.verify_key)), "secret")
    with pytest.raises(CryptoError):
        decrypt_with(SigningKey.generate(), envelope)
    fields = json.loads(envelope)
    data = bytearray(b64d(fields["encrypted_content"]))
    data[0] ^= 1
    fields["encrypted_content"] = b64e(bytes(data))
    with pytest.raises(InvalidTag):
        decrypt_with(bob, json.dumps(fields))


def test_x25519_private_is_clamped_sha512_of_seed():
    key = KEYS["bob"]
    scalar = bytearray(hashlib.sha512(bytes(key)).digest()[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    assert bytes(x25519_private_from(key)) == bytes(scalar)


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00z", 0),
        ("1970-01-01 00:00:00Z", 0),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("1970-01-01T05:30:00+05:30", 0),
        ("1969-12-31T21:00:00-03:00", 0),
        ("1970-01-01T00:00:00.1Z", 100_000_000),
        ("1970-01-01T00:00:00.12Z", 120_000_000),
        ("1970-01-01T00:00:00.123Z", 123_000_000),
        ("1970-01-01T00:00:00.1234Z", 123_400_000),
        ("1970-01-01T00:00:00.12345Z", 123_450_000),
        ("1970-01-01T00:00:00.123456Z", 123_456_000),
        ("1970-01-01T00:00:00.1234567Z", 123_456_700),
        ("1970-01-01T00:00:00.12345678Z", 123_456_780),
        ("1970-01-01T00:00:00.123456789Z", 123_456_789),
        ("1970-01-01T00:00:00.000000001-03:00", 3 * 3600 * 10**9 + 1),
        ("2000-02-29T12:00:00Z", 951825600 * 10**9),
        ("2025-04-01T12:34:56.123456789-03:00", 1743521696123456789),
        ("0001-01-01T00:00:00Z", -62135596800 * 10**9),
    ],
)
def test_rfc3339_parser(text, nanos):
    assert rfc3339_unix_nanos(text) == nanos


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2025-04-01T12:34:56",  # no zone
        "2025-04-01T12:34:56.Z",  # empty fraction
        "2025-04-01T12:34:56.1234567890Z",  # ten digits
        "2025-04-01T12:34:56+0300",
        "2025-13-01T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2025-04-01T24:00:00Z",
        "2025-04-01T12:34:60Z",
        "2025-04-01T12:34:56+24:00",
        "2025-04-01T12:34:56Z ",
    ],
)
def test_rfc3339_parser_rejects(text):
    with pytest.raises(ValueError):
        rfc3339_unix_nanos(text)


@pytest.mark.parametrize("offset", [0, -180, 330, 14 * 60, -12 * 60])
@pytest.mark.parametrize(
    "nanos", [0, 1, -1, 1795668342123456789, 1743521696000000000, 951825600 * 10**9]
)
def test_format_rfc3339_round_trip(nanos, offset):
    text = format_rfc3339(nanos, offset)
    assert rfc3339_unix_nanos(text) == nanos
    assert len(text.split(".")[1].rstrip("Z").split("+")[0].split("-")[0]) == 9
