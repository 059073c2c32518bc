"""Validation of what a client registers: user id, username, public key.

The original server accepted anything and answered 500 on the database
error; dkserver answers 400 with the message of a ValidationError.
"""

from __future__ import annotations

import unicodedata

from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.exceptions import CryptoError

from dkserver.auth.signatures import PUBLIC_KEY_LEN, decode_b64_strict

MAX_USER_ID_LENGTH = 128
MAX_USERNAME_LENGTH = 256

#: Ids that name the server itself in message frames (``from``/``to``).
RESERVED_USER_IDS = frozenset({"system", "broadcast"})


class ValidationError(ValueError):
    """Input rejected; the message is safe to send back to the client."""


def _has_space_or_control(text: str) -> bool:
    # isprintable() is False for every Unicode "Other" (Cc, Cf, Cs, Co, Cn) and
    # "Separator" (Zs, Zl, Zp) character except the ASCII space, which
    # isspace() catches.
    return not text.isprintable() or any(ch.isspace() for ch in text)


_URL_BREAKING = frozenset("?#%\\")


def validate_user_id(user_id: object) -> str:
    """Return ``user_id`` if it can be registered, else raise ValidationError.

    A user id is a URL path segment and the ``from``/``to`` of frames, so it
    has no ``/``, whitespace or control characters and is 1-128 characters.
    The reserved ``system`` and ``broadcast`` are refused case-insensitively
    and after NFKC normalisation (so ``System`` or the fullwidth-letter
    spelling too): a lookalike could pass for server frames in a client's display.
    """
    if not isinstance(user_id, str):
        raise ValidationError("user_id must be a string")
    if not user_id:
        raise ValidationError("user_id must not be empty")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise ValidationError(
            f"user_id must be at most {MAX_USER_ID_LENGTH} characters"
        )
    if "/" in user_id:
        raise ValidationError("user_id must not contain '/'")
    if any(c in _URL_BREAKING for c in user_id) or user_id in (".", ".."):
        # These would change the meaning of /auth/users/{id} and similar URLs.
        raise ValidationError("user_id must not contain '?', '#', '%' or '\\'")
    if _has_space_or_control(user_id):
        raise ValidationError(
            "user_id must not contain whitespace or control characters"
        )
    if unicodedata.normalize("NFKC", user_id).casefold() in RESERVED_USER_IDS:
        raise ValidationError(f"user_id {user_id!r} is reserved")
    return user_id


def validate_username(name: object) -> str:
    """Return ``name`` if acceptable as a display name, else raise ValidationError.

    1-256 characters, not blank, and printable: inner ASCII spaces are fine
    ("Ada Lovelace"), but tabs, newlines, other separators and invisible
    format characters (which can spoof a name in a client) are not.
    """
    if not isinstance(name, str):
        raise ValidationError("username must be a string")
    if not name.strip():
        raise ValidationError("username must not be empty")
    if len(name) > MAX_USERNAME_LENGTH:
        raise ValidationError(
            f"username must be at most {MAX_USERNAME_LENGTH} characters"
        )
    if not name.isprintable():
        raise ValidationError("username must not contain control characters")
    return name


def validate_public_key(public_key_b64: object) -> str:
    """Return the key text if it is a usable Ed25519 public key.

    Beyond "32 bytes of base64", the point must convert to X25519 (on the
    curve, in the prime-order subgroup, not of small order): clients derive
    the encryption key for direct messages from it, and a small-order key
    would make every signature check meaningless.
    """
    if not isinstance(public_key_b64, str):
        raise ValidationError("public_key must be a base64 string")
    try:
        raw = decode_b64_strict(public_key_b64, PUBLIC_KEY_LEN)
    except ValueError:
        raise ValidationError(
            f"public_key must be standard base64 of {PUBLIC_KEY_LEN} bytes"
        )
    try:
        crypto_sign_ed25519_pk_to_curve25519(raw)
    except CryptoError:
        raise ValidationError("public_key is not a valid Ed25519 public key")
    return public_key_b64
