"""Client-side message crypto, written independently from PROTOCOL.md.

Signatures, exact RFC 3339 -> Unix-nanosecond parsing and the direct-message
envelope (X25519 box of a random key + AES-256-GCM of the plaintext). Nothing
here imports dkserver, so these helpers can catch server bugs.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re

import nacl.exceptions
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

_NANOS = 1_000_000_000


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --- signatures ---------------------------------------------------------------


def signing_bytes(from_: str, to: str, unix_nanos: int, content: str) -> bytes:
    """UTF-8 of ``from|to|<unix nanos>|content`` (what the signature covers)."""
    return f"{from_}|{to}|{int(unix_nanos)}|{content}".encode()


def sign_message(
    signing_key: SigningKey, from_: str, to: str, unix_nanos: int, content: str
) -> str:
    """Base64 Ed25519 signature of a message."""
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
    """True when ``signature_b64`` is the sender's signature of the message."""
    try:
        key = VerifyKey(b64d(public_key_b64))
        key.verify(signing_bytes(from_, to, unix_nanos, content), b64d(signature_b64))
    except (binascii.Error, ValueError, nacl.exceptions.BadSignatureError):
        return False
    return True


# --- timestamps ---------------------------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
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


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28
    return 30 if m in (4, 6, 9, 11) else 31


def rfc3339_unix_nanos(text: str) -> int:
    """Exact Unix nanoseconds of an RFC 3339 timestamp (0-9 fraction digits)."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    frac, zulu, sign, off_h, off_m = match.groups()[6:]
    if not (1 <= month <= 12 and 1 <= day <= _days_in_month(year, month)):
        raise ValueError(f"invalid date in {text!r}")
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"invalid time in {text!r}")
    offset = 0
    if not zulu:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError(f"invalid offset in {text!r}")
        offset = (int(off_h) * 3600 + int(off_m) * 60) * (-1 if sign == "-" else 1)
    seconds = _days_from_civil(year, month, day) * 86400
    seconds += hour * 3600 + minute * 60 + second - offset
    nanos = int((frac or "").ljust(9, "0"))
    return seconds * _NANOS + nanos


def format_rfc3339(unix_nanos: int, offset_minutes: int = 0) -> str:
    """RFC 3339 text with 9 fraction digits at a fixed UTC offset."""
    local = unix_nanos + offset_minutes * 60 * _NANOS
    seconds, nanos = divmod(local, _NANOS)
    days, sod = divmod(seconds, 86400)
    # civil_from_days (H. Hinnant)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
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


# --- direct-message envelope --------------------------------------------------


def encrypt_for(recipient_ed25519_public_b64: str, plaintext: str) -> str:
    """The envelope JSON text carrying ``plaintext`` for the recipient."""
    recipient = PublicKey(
        crypto_sign_ed25519_pk_to_curve25519(b64d(recipient_ed25519_public_b64))
    )
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


def x25519_private_from(signing_key: SigningKey) -> PrivateKey:
    """The recipient's X25519 private key derived from its Ed25519 key."""
    # SigningKey keeps the 64-byte libsodium secret key (seed || public key).
    return PrivateKey(crypto_sign_ed25519_sk_to_curve25519(signing_key._signing_key))


def decrypt_with(signing_key: SigningKey, envelope_json: str) -> str:
    """Open an envelope addressed to ``signing_key``'s owner (raises on failure)."""
    envelope = json.loads(envelope_json)
    ephemeral = PublicKey(b64d(envelope["ephemeral_public_key"]))
    box = Box(x25519_private_from(signing_key), ephemeral)
    key = box.decrypt(b64d(envelope["encrypted_key"]), b64d(envelope["key_nonce"]))
    data = AESGCM(key).decrypt(
        b64d(envelope["data_nonce"]), b64d(envelope["encrypted_content"]), None
    )
    return data.decode("utf-8")
