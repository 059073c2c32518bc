"""Message crypto of PROTOCOL.md: signatures, exact timestamps, the envelope.

Signatures cover ``from|to|<unix nanoseconds>|content``, so timestamps are
parsed and formatted here by hand, exact to the nanosecond (``datetime``
keeps only microseconds).  The direct-message envelope is a NaCl box of a
random key from a fresh X25519 key to the recipient's X25519 key (derived
from its Ed25519 key), plus AES-256-GCM of the UTF-8 plaintext under that key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time

import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import (
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

ENVELOPE_FIELDS = (
    "ephemeral_public_key",
    "key_nonce",
    "encrypted_key",
    "data_nonce",
    "encrypted_content",
)

#: Go's zero time, the timestamp of the server's system frames.
ZERO_TIME = "0001-01-01T00:00:00Z"

_NANOS = 1_000_000_000


class CryptoError(ValueError):
    """An envelope that cannot be opened, or a malformed key or timestamp."""


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """Strict standard base64 (with padding), as PROTOCOL.md specifies."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise CryptoError(f"invalid base64: {e}") from None


# --- signatures ---------------------------------------------------------------


def signing_bytes(from_: str, to: str, unix_nanos: int, content: str) -> bytes:
    """What a message signature covers: UTF-8 of ``from|to|nanos|content``."""
    return f"{from_}|{to}|{int(unix_nanos)}|{content}".encode()


def sign_message(
    signing_key: SigningKey, from_: str, to: str, unix_nanos: int, content: str
) -> str:
    """The base64 Ed25519 signature of a message."""
    data = signing_bytes(from_, to, unix_nanos, content)
    return b64e(signing_key.sign(data).signature)


def verify_message(
    public_key_b64: str,
    from_: str,
    to: str,
    unix_nanos: int,
    content: str,
    signature_b64: str,
) -> bool:
    """True when ``signature_b64`` is a valid signature by ``public_key_b64``."""
    try:
        key = VerifyKey(b64d(public_key_b64))
        key.verify(signing_bytes(from_, to, unix_nanos, content), b64d(signature_b64))
    except (CryptoError, ValueError, TypeError, nacl.exceptions.CryptoError):
        return False
    return True


def verify_frame(frame: dict, public_key_b64: str) -> bool:
    """Verify a message object's ``signature`` (False when absent or malformed)."""
    signature = frame.get("signature")
    if not isinstance(signature, str) or not signature:
        return False
    try:
        nanos = parse_timestamp(frame.get("timestamp"))
    except CryptoError:
        return False
    from_, to, content = frame.get("from"), frame.get("to"), frame.get("content")
    if not all(isinstance(v, str) for v in (from_, to, content)):
        return False
    return verify_message(public_key_b64, from_, to, nanos, content, signature)


def sign_challenge(signing_key: SigningKey, challenge_b64: str) -> str:
    """Login step 2 signs the ASCII text of the base64 challenge, as received."""
    return b64e(signing_key.sign(challenge_b64.encode("ascii")).signature)


# --- timestamps -----------------------------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28
    return 30 if m in (4, 6, 9, 11) else 31


def parse_timestamp(text: object) -> int:
    """Exact Unix nanoseconds of an RFC 3339 timestamp.

    Like Go's parser, a fraction longer than nine digits is truncated (not
    rounded) to nanoseconds.
    """
    if not isinstance(text, str):
        raise CryptoError("timestamp must be a string")
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise CryptoError(f"not an RFC 3339 timestamp: {text[:64]!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    frac, zulu, sign, off_h, off_m = match.groups()[6:]
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        raise CryptoError(f"invalid date in {text!r}")
    if hour > 23 or minute > 59 or second > 60:
        raise CryptoError(f"invalid time in {text!r}")
    offset = 0
    if not zulu:
        if int(off_h) > 23 or int(off_m) > 59:
            raise CryptoError(f"invalid offset in {text!r}")
        offset = (int(off_h) * 3600 + int(off_m) * 60) * (-1 if sign == "-" else 1)
    seconds = _days_from_civil(year, month, day) * 86400
    seconds += hour * 3600 + minute * 60 + second - offset
    nanos = int((frac or "")[:9].ljust(9, "0"))
    return seconds * _NANOS + nanos


def format_timestamp(unix_nanos: int, offset_seconds: int = 0) -> str:
    """RFC 3339 with all nine fraction digits at a fixed UTC offset."""
    offset_minutes = offset_seconds // 60
    seconds, nanos = divmod(unix_nanos + offset_minutes * 60 * _NANOS, _NANOS)
    days, sod = divmod(seconds, 86400)
    year, month, day = _civil_from_days(days)
    if offset_minutes == 0:
        zone = "Z"
    else:
        sign = "-" if offset_minutes < 0 else "+"
        zone = "%s%02d:%02d" % (sign, *divmod(abs(offset_minutes), 60))
    return "%04d-%02d-%02dT%02d:%02d:%02d.%09d%s" % (
        year,
        month,
        day,
        sod // 3600,
        sod // 60 % 60,
        sod % 60,
        nanos,
        zone,
    )


def now_timestamp(clock_ns: int | None = None) -> tuple[str, int]:
    """The current instant as (local-offset RFC 3339 text, Unix nanoseconds).

    The original clients send local time with its offset (Go's ``time.Now``);
    any offset names the same instant, which is what the signature covers.
    """
    ns = time.time_ns() if clock_ns is None else clock_ns
    offset = time.localtime(ns // _NANOS).tm_gmtoff or 0
    return format_timestamp(ns, offset), ns


# --- keys -------------------------------------------------------------------------


def x25519_public_from(ed25519_public: bytes) -> PublicKey:
    try:
        return PublicKey(crypto_sign_ed25519_pk_to_curve25519(ed25519_public))
    except (ValueError, TypeError, nacl.exceptions.CryptoError) as e:
        raise CryptoError(f"not a usable Ed25519 public key: {e}") from None


def x25519_private_from(signing_key: SigningKey) -> PrivateKey:
    """libsodium's ``crypto_sign_ed25519_sk_to_curve25519`` of the signing key."""
    secret = bytes(signing_key) + bytes(signing_key.verify_key)  # seed || public
    return PrivateKey(crypto_sign_ed25519_sk_to_curve25519(secret))


# --- direct-message envelope --------------------------------------------------------


def encrypt(recipient_public_b64: str, plaintext: str) -> str:
    """The envelope JSON text carrying ``plaintext`` to the recipient."""
    recipient = x25519_public_from(b64d(recipient_public_b64))
    ephemeral = PrivateKey.generate()
    key = os.urandom(32)
    key_nonce = os.urandom(24)
    data_nonce = os.urandom(12)
    encrypted_key = Box(ephemeral, recipient).encrypt(key, key_nonce).ciphertext
    encrypted_content = AESGCM(key).encrypt(data_nonce, plaintext.encode(), None)
    envelope = {
        "ephemeral_public_key": b64e(bytes(ephemeral.public_key)),
        "key_nonce": b64e(key_nonce),
        "encrypted_key": b64e(encrypted_key),
        "data_nonce": b64e(data_nonce),
        "encrypted_content": b64e(encrypted_content),
    }
    return json.dumps(envelope, separators=(",", ":"))


def parse_envelope(content: str) -> dict[str, str] | None:
    """The envelope's fields if ``content`` is one, else None (plain text)."""
    if not content.startswith("{"):
        return None
    try:
        obj = json.loads(content)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if not all(isinstance(obj.get(f), str) for f in ENVELOPE_FIELDS):
        return None
    return obj


def decrypt(signing_key: SigningKey, content: str) -> str:
    """Open an envelope addressed to ``signing_key``'s owner."""
    envelope = parse_envelope(content)
    if envelope is None:
        raise CryptoError("content is not an encrypted envelope")
    try:
        ephemeral = PublicKey(b64d(envelope["ephemeral_public_key"]))
        box = Box(x25519_private_from(signing_key), ephemeral)
        key = box.decrypt(b64d(envelope["encrypted_key"]), b64d(envelope["key_nonce"]))
        data = AESGCM(key).decrypt(
            b64d(envelope["data_nonce"]), b64d(envelope["encrypted_content"]), None
        )
        return data.decode("utf-8")
    except CryptoError:
        raise
    except (ValueError, TypeError, InvalidTag, nacl.exceptions.CryptoError) as e:
        raise CryptoError(f"cannot decrypt: {type(e).__name__} {e}".strip()) from None
