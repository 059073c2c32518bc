"""ChallengeStore and the challenge signature layout."""

from __future__ import annotations

import base64

import pytest
from nacl.signing import SigningKey
from twisted.internet.task import Clock

from dkserver.auth.challenges import ChallengeStore
from dkserver.auth.signatures import (
    decode_b64_strict,
    verify_challenge,
    verify_message_signature,
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_issue_returns_padded_base64_of_32_random_bytes(clock: Clock) -> None:
    store = ChallengeStore(clock)
    challenge = store.issue("alice")
    assert len(challenge) == 44 and challenge.endswith("=")
    assert len(base64.b64decode(challenge, validate=True)) == 32
    assert store.issue("bob") != challenge
    assert len(store) == 2


def test_consume_is_single_use(clock: Clock) -> None:
    store = ChallengeStore(clock)
    challenge = store.issue("alice")
    assert store.consume("alice") == challenge
    assert store.consume("alice") is None
    assert len(store) == 0


def test_failed_verification_still_consumes_the_challenge(clock: Clock) -> None:
    store = ChallengeStore(clock)
    key = SigningKey.generate()
    challenge = store.issue("alice")
    taken = store.consume("alice")
    wrong = b64(key.sign(b"something else").signature)
    assert not verify_challenge(b64(key.verify_key.encode()), taken, wrong)
    # A second attempt with a correct signature finds nothing to verify against.
    assert store.consume("alice") is None
    assert taken == challenge


def test_consume_unknown_user_returns_none(clock: Clock) -> None:
    store = ChallengeStore(clock)
    store.issue("alice")
    assert store.consume("bob") is None
    assert len(store) == 1


def test_challenge_expires_at_ttl(clock: Clock) -> None:
    store = ChallengeStore(clock, ttl=60.0)
    first = store.issue("alice")
    clock.advance(59.999)
    assert store.consume("alice") == first

    store.issue("alice")
    clock.advance(60.0)
    assert store.consume("alice") is None
    assert len(store) == 0  # the expired entry was removed, not left behind


def test_new_challenge_replaces_the_old_one(clock: Clock) -> None:
    store = ChallengeStore(clock)
    old = store.issue("alice")
    new = store.issue("alice")
    assert new != old
    assert len(store) == 1
    assert store.consume("alice") == new


def test_replacement_restarts_the_ttl(clock: Clock) -> None:
    store = ChallengeStore(clock, ttl=10.0)
    store.issue("alice")
    clock.advance(8)
    renewed = store.issue("alice")
    clock.advance(8)
    assert store.consume("alice") == renewed


def test_full_store_evicts_the_oldest(clock: Clock) -> None:
    store = ChallengeStore(clock, max_outstanding=3)
    for user in ("a", "b", "c"):
        store.issue(user)
        clock.advance(1)
    store.issue("a")  # replacing makes "a" the newest
    store.issue("d")
    assert len(store) == 3
    assert store.evictions == 1
    assert store.consume("b") is None  # the oldest went
    assert store.consume("c") is not None
    assert store.consume("a") is not None
    assert store.consume("d") is not None


def test_flood_keeps_the_store_bounded(clock: Clock) -> None:
    store = ChallengeStore(clock, max_outstanding=100)
    for i in range(10_000):
        store.issue(f"user{i}")
    assert len(store) == 100
    assert store.consume("user9999") is not None
    assert store.consume("user0") is None


def test_issue_drops_expired_before_evicting_live_ones(clock: Clock) -> None:
    store = ChallengeStore(clock, ttl=5.0, max_outstanding=2)
    store.issue("old")
    clock.advance(5)
    store.issue("b")
    store.issue("c")
    assert store.evictions == 0
    assert store.consume("b") is not None
    assert store.consume("c") is not None


def test_prune_drops_only_expired(clock: Clock) -> None:
    store = ChallengeStore(clock, ttl=60.0)
    store.issue("a")
    store.issue("b")
    clock.advance(30)
    store.issue("c")
    assert store.prune() == 0
    clock.advance(30)
    assert store.prune() == 2
    assert len(store) == 1
    assert store.consume("c") is not None


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"ttl": -1}, {"max_outstanding": 0}])
def test_rejects_nonsense_settings(clock: Clock, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ChallengeStore(clock, **kwargs)


# Signatures


def test_signature_over_ascii_of_base64_challenge_verifies(clock: Clock) -> None:
    key = SigningKey.generate()
    public = b64(key.verify_key.encode())
    challenge = ChallengeStore(clock).issue("alice")
    signature = b64(key.sign(challenge.encode("ascii")).signature)
    assert verify_challenge(public, challenge, signature) is True


def test_signature_over_decoded_challenge_bytes_does_not_verify(clock: Clock) -> None:
    key = SigningKey.generate()
    public = b64(key.verify_key.encode())
    challenge = ChallengeStore(clock).issue("alice")
    signature = b64(key.sign(base64.b64decode(challenge)).signature)
    assert verify_challenge(public, challenge, signature) is False


def test_signature_by_another_key_does_not_verify() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    challenge = b64(bytes(32))
    signature = b64(other.sign(challenge.encode()).signature)
    assert verify_challenge(b64(key.verify_key.encode()), challenge, signature) is False


@pytest.mark.parametrize(
    ("public", "signature"),
    [
        ("not base64!", None),
        (b64(bytes(31)), None),
        (None, "not base64!"),
        (None, b64(bytes(63))),
        (None, ""),
        (123, None),
        (None, 123),
    ],
)
def test_malformed_inputs_give_false_not_exceptions(public, signature) -> None:
    key = SigningKey.generate()
    challenge = b64(bytes(32))
    good_sig = b64(key.sign(challenge.encode()).signature)
    public = b64(key.verify_key.encode()) if public is None else public
    signature = good_sig if signature is None else signature
    assert verify_challenge(public, challenge, signature) is False


def test_message_signature_covers_from_to_nanos_content() -> None:
    key = SigningKey.generate()
    public = b64(key.verify_key.encode())
    nanos = 1_743_521_696_123_456_789
    content = '{"ciphertext": "é"}'
    signed = f"alice|bob|{nanos}|{content}".encode()
    signature = b64(key.sign(signed).signature)
    assert verify_message_signature(public, "alice", "bob", nanos, content, signature)
    assert not verify_message_signature(
        public, "alice", "bob", nanos + 1, content, signature
    )
    assert not verify_message_signature(
        public, "mallory", "bob", nanos, content, signature
    )


def test_decode_b64_strict() -> None:
    assert decode_b64_strict("AAEC") == b"\x00\x01\x02"
    assert decode_b64_strict(b64(bytes(32)), 32) == bytes(32)
    for bad in ["AAE", "AA\nEC", "AA-_", "ÀÀÀÀ", "AAEC!"]:
        with pytest.raises(ValueError):
            decode_b64_strict(bad)
    with pytest.raises(ValueError, match="expected 32 bytes, got 31"):
        decode_b64_strict(b64(bytes(31)), 32)
    with pytest.raises(ValueError):
        decode_b64_strict(None)  # type: ignore[arg-type]
