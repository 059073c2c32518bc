"""load_or_create_secret: JWT_SECRET rules and the kept generated secret."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dkserver.auth.secret import SecretError, load_or_create_secret


def test_env_value_is_used_as_its_utf8_bytes(tmp_path: Path) -> None:
    value = "ü" * 20  # 40 bytes, 20 characters
    secret, warnings = load_or_create_secret(value, str(tmp_path / "jwt.secret"))
    assert secret == value.encode("utf-8")
    assert warnings == []
    assert not (tmp_path / "jwt.secret").exists()


def test_env_value_with_non_utf8_environment_bytes_round_trips(tmp_path: Path) -> None:
    raw = b"\xff\xfe" + b"x" * 30
    value = raw.decode("utf-8", "surrogateescape")  # as os.environ presents it
    secret, _ = load_or_create_secret(value, str(tmp_path / "s"))
    assert secret == raw


def test_short_env_value_stops_startup_naming_jwt_secret(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"^JWT_SECRET is 15 bytes long") as info:
        load_or_create_secret("x" * 15, str(tmp_path / "s"))
    assert "x" * 15 not in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_medium_env_value_warns_once_citing_rfc_7518(tmp_path: Path) -> None:
    secret, warnings = load_or_create_secret("y" * 16, str(tmp_path / "s"))
    assert secret == b"y" * 16
    assert len(warnings) == 1
    assert "JWT_SECRET is only 16 bytes" in warnings[0]
    assert "RFC 7518" in warnings[0]
    assert "y" * 16 not in warnings[0]
    _, warnings = load_or_create_secret("y" * 31, str(tmp_path / "s"))
    assert len(warnings) == 1
    _, warnings = load_or_create_secret("y" * 32, str(tmp_path / "s"))
    assert warnings == []


def test_empty_env_value_counts_as_unset(tmp_path: Path) -> None:
    path = tmp_path / "s"
    secret, _ = load_or_create_secret("", str(path))
    assert len(secret) == 32
    assert path.exists()


def test_generated_secret_is_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "jwt.secret"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        first, warnings = load_or_create_secret(None, str(path))
    finally:
        os.umask(old_umask)
    assert warnings == []
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.hex()
    second, _ = load_or_create_secret(None, str(path))
    assert second == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jwt.secret"]


def test_two_fresh_directories_get_different_secrets(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _ = load_or_create_secret(None, str(tmp_path / "a" / "s"))
    b, _ = load_or_create_secret(None, str(tmp_path / "b" / "s"))
    assert a != b


def test_existing_file_with_loose_mode_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("ab" * 32)
    path.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        load_or_create_secret(None, str(path))


@pytest.mark.parametrize("content", ["", "zz" * 32, "ab" * 31, "ab" * 33, "\xff"])
def test_malformed_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "s"
    path.write_text(content, encoding="latin-1")
    path.chmod(0o600)
    with pytest.raises(SecretError, match="64 hex digits"):
        load_or_create_secret(None, str(path))


def test_file_hex_with_trailing_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_text("0f" * 32 + "\n")
    path.chmod(0o600)
    assert load_or_create_secret(None, str(path)) == (b"\x0f" * 32, [])


def test_env_value_wins_over_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "s"
    load_or_create_secret(None, str(path))
    secret, _ = load_or_create_secret("e" * 32, str(path))
    assert secret == b"e" * 32


def test_missing_directory_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot write the JWT secret file"):
        load_or_create_secret(None, str(tmp_path / "nope" / "s"))


def test_directory_at_the_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretError):
        load_or_create_secret(None, str(tmp_path))
