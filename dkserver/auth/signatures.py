"""Ed25519 verification in the exact byte layouts the existing clients sign.

Both layouts are easy to get subtly wrong, so they live in one place:

* login: the client signs the ASCII bytes of the base64 challenge string as
  it received it, not the 32 decoded bytes;
* messages: ``from|to|<unix nanoseconds>|content`` as UTF-8.
"""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64


def decode_b64_strict(text: str, expected_len: int | None = None) -> bytes:
    """Decode standard, padded base64, raising ValueError for anything else.

    ``base64.b64decode`` without ``validate=True`` silently skips characters
    outside the alphabet, which would let garbage through as a shorter value.
    """
    if not isinstance(text, str):
        raise ValueError("expected a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if expected_len is not None and len(raw) != expected_len:
        raise ValueError(f"expected {expected_len} bytes, got {len(raw)}")
    return raw


#: Decoded public keys kept (a login and every signed message need one).
KEY_CACHE_SIZE = 8192


@lru_cache(maxsize=KEY_CACHE_SIZE)
def verify_key(public_key_b64: str) -> VerifyKey:
    """The decoded key, cached by its text: a rotated key is another entry.

    Raises ValueError for a key that is not base64 of 32 bytes (not cached).
    """
    return VerifyKey(decode_b64_strict(public_key_b64, PUBLIC_KEY_LEN))


def _verify(public_key_b64: str, signed: bytes, signature_b64: str) -> bool:
    try:
        key = verify_key(public_key_b64)
        key.verify(signed, decode_b64_strict(signature_b64, SIGNATURE_LEN))
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def verify_challenge(public_key_b64: str, challenge: str, signature_b64: str) -> bool:
    """True if the signature covers the ASCII of the base64 ``challenge``.

    Any malformed input gives False.  A route that must answer 400 for a
    signature that is not base64 checks it first with
    ``decode_b64_strict(signature_b64)``.
    """
    try:
        signed = challenge.encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        return False
    return _verify(public_key_b64, signed, signature_b64)


def message_signing_bytes(from_: str, to: str, unix_nanos: int, content: str) -> bytes:
    """The bytes a message signature covers (shared with test clients)."""
    return f"{from_}|{to}|{unix_nanos}|{content}".encode()


def verify_message_signature(
    public_key_b64: str,
    from_: str,
    to: str,
    unix_nanos: int,
    content: str,
    signature_b64: str,
) -> bool:
    """True if the signature covers ``from|to|unix_nanos|content`` (UTF-8)."""
    try:
        signed = message_signing_bytes(from_, to, unix_nanos, content)
    except UnicodeEncodeError:
        return False
    return _verify(public_key_b64, signed, signature_b64)


def rotate_key_signing_bytes(
    user_id: str, challenge: str, new_public_key: str
) -> bytes:
    """What the old key signs to replace itself (``POST /auth/rotate-key``):
    ``dkserver rotate-key`` and the user id, the challenge (as text, as at
    login) and the new key (base64, as sent), one per line, UTF-8.  The
    first line keeps a login signature (the challenge alone) from serving
    here."""
    return f"dkserver rotate-key\n{user_id}\n{challenge}\n{new_public_key}".encode()


def verify_rotate_key(
    public_key_b64: str,
    user_id: str,
    challenge: str,
    new_public_key: str,
    signature_b64: str,
) -> bool:
    try:
        signed = rotate_key_signing_bytes(user_id, challenge, new_public_key)
    except UnicodeEncodeError:
        return False
    return _verify(public_key_b64, signed, signature_b64)
