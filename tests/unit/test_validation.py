"""Registration input validation."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from dkserver.auth.validation import (
    ValidationError,
    validate_public_key,
    validate_user_id,
    validate_username,
)


@pytest.mark.parametrize(
    "user_id",
    ["alice", "a", "x" * 128, "user-1_2.3@host", "Ünïcødé", "日本語", "systems", "sys"],
)
def test_good_user_ids_are_returned_unchanged(user_id: str) -> None:
    assert validate_user_id(user_id) == user_id


@pytest.mark.parametrize(
    ("user_id", "message"),
    [
        ("", "empty"),
        ("x" * 129, "at most 128"),
        ("a/b", "'/'"),
        ("/", "'/'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\nb", "whitespace"),
        ("a\x00b", "control"),
        ("a\x7fb", "control"),
        ("a\u200bb", "control"),  # zero-width space (Cf)
        ("a\u00a0b", "control"),  # no-break space (Zs)
        ("a\u2028b", "control"),  # line separator (Zl)
        ("a\u202eb", "control"),  # right-to-left override (Cf)
        ("\ud800", "control"),  # lone surrogate
        ("system", "reserved"),
        ("broadcast", "reserved"),
        ("System", "reserved"),
        ("BROADCAST", "reserved"),
        (
            "\uff53\uff59\uff53\uff54\uff45\uff4d",
            "reserved",
        ),  # fullwidth, NFKC-equal to "system"
    ],
)
def test_bad_user_ids_are_rejected(user_id: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_user_id(user_id)


@pytest.mark.parametrize("value", [None, 42, b"alice", ["alice"]])
def test_non_string_user_id_is_rejected(value: object) -> None:
    with pytest.raises(ValidationError, match="must be a string"):
        validate_user_id(value)


@given(st.text(max_size=200))
def test_validate_user_id_raises_only_validation_error(text: str) -> None:
    try:
        result = validate_user_id(text)
    except ValidationError:
        return
    assert result == text
    assert 1 <= len(text) <= 128
    assert "/" not in text
    assert not any(ch.isspace() for ch in text)


@pytest.mark.parametrize("name", ["Alice", "Ada Lovelace", "x" * 256, "李小龍", "a"])
def test_good_usernames(name: str) -> None:
    assert validate_username(name) == name


@pytest.mark.parametrize(
    "name", ["", "   ", "x" * 257, "a\nb", "a\tb", "a\x00", "a\u202eb", None, 3]
)
def test_bad_usernames(name: object) -> None:
    with pytest.raises(ValidationError):
        validate_username(name)


@given(st.text(max_size=300))
def test_validate_username_raises_only_validation_error(text: str) -> None:
    try:
        assert validate_username(text) == text
    except ValidationError:
        pass


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def test_real_ed25519_public_key_is_accepted() -> None:
    key = b64(SigningKey.generate().verify_key.encode())
    assert validate_public_key(key) == key


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b64(bytes(31)), "32 bytes"),
        (b64(bytes(33)), "32 bytes"),
        ("", "32 bytes"),
        ("not base64 at all!!", "32 bytes"),
        (b64(bytes(32))[:-1], "32 bytes"),  # padding removed
        (base64.urlsafe_b64encode(b"\xfb" * 32).decode(), "32 bytes"),
        (None, "string"),
        (b64(bytes(32)), "not a valid Ed25519"),  # small-order point
        (b64(b"\x01" + bytes(31)), "not a valid Ed25519"),  # identity point
        (b64(b"\xff" * 32), "not a valid Ed25519"),  # not canonical / off curve
    ],
)
def test_bad_public_keys_are_rejected(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_public_key(value)


@pytest.mark.parametrize("user_id", ["a?b", "a#b", "100%", "back\\slash", ".", ".."])
def test_user_ids_that_break_urls_are_refused(user_id):
    with pytest.raises(ValidationError):
        validate_user_id(user_id)
