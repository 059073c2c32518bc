"""Ed25519 checks with decoded keys cached by their text."""

from __future__ import annotations

import base64

from nacl.signing import SigningKey

from dkserver.auth.signatures import (
    KEY_CACHE_SIZE,
    verify_challenge,
    verify_key,
)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_cached_key_still_checks_each_signature():
    key = SigningKey.generate()
    public = _b64(bytes(key.verify_key))
    good = _b64(key.sign(b"challenge-1").signature)
    assert verify_challenge(public, "challenge-1", good)
    # The second check uses the cached key and must still refuse a mismatch.
    assert not verify_challenge(public, "challenge-2", good)
    assert verify_challenge(
        public, "challenge-2", _b64(key.sign(b"challenge-2").signature)
    )


def test_a_rotated_key_is_its_own_entry():
    old, new = SigningKey.generate(), SigningKey.generate()
    old_public, new_public = _b64(bytes(old.verify_key)), _b64(bytes(new.verify_key))
    signed_by_old = _b64(old.sign(b"c").signature)
    assert verify_challenge(old_public, "c", signed_by_old)
    assert not verify_challenge(new_public, "c", signed_by_old)
    assert verify_challenge(new_public, "c", _b64(new.sign(b"c").signature))


def test_malformed_keys_are_refused_and_not_cached():
    before = verify_key.cache_info().currsize
    for bad in ("not base64!", _b64(b"x" * 31), 42):
        assert not verify_challenge(bad, "c", _b64(b"s" * 64))
    assert verify_key.cache_info().currsize == before


def test_the_key_cache_is_bounded():
    assert verify_key.cache_info().maxsize == KEY_CACHE_SIZE
