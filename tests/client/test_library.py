"""Units of the client library that need no server: key files, backoff,
tokens, spool, URLs."""

from __future__ import annotations

import base64
import json
import os
import stat
import time

import pytest

from dkclient.account import Client, NotInitialised, token_claims
from dkclient.api import normalize_server
from dkclient.keys import Home, Identity, KeyFileError, validate_user_id
from dkclient.session import Backoff, ws_url


def test_identity_file_is_private_and_round_trips(tmp_path):
    home = Home(tmp_path / "home")
    ident = Identity.generate("alice", "Alice", "https://dk.example")
    home.save_identity(ident)
    path = home.identity_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loaded = home.load_identity()
    assert loaded.user_id == "alice" and loaded.username == "Alice"
    assert bytes(loaded.signing_key) == bytes(ident.signing_key)
    assert loaded.server == "https://dk.example"
    assert os.listdir(path.parent) == ["identity.json"]  # no temp files left


def test_identity_file_overwrite_is_atomic_and_stays_private(tmp_path):
    home = Home(tmp_path)
    home.save_identity(Identity.generate("a"))
    os.chmod(home.identity_path, 0o644)
    home.save_identity(Identity.generate("b"))
    assert stat.S_IMODE(home.identity_path.stat().st_mode) == 0o600
    assert home.load_identity().user_id == "b"


def test_malformed_identity_is_a_clear_error(tmp_path):
    home = Home(tmp_path)
    home.identity_path.write_text("{nope")
    with pytest.raises(KeyFileError):
        home.load_identity()
    ident = Identity.generate("a").to_json()
    ident["public_key"] = base64.b64encode(b"x" * 32).decode()
    home.identity_path.write_text(json.dumps(ident))
    with pytest.raises(KeyFileError, match="does not match"):
        home.load_identity()
    with pytest.raises(NotInitialised):
        Client(tmp_path / "empty").identity


def test_default_home_follows_dk_home_and_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("DK_HOME", str(tmp_path / "dkh"))
    assert Home().path == tmp_path / "dkh"
    monkeypatch.delenv("DK_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert Home().path == tmp_path / "xdg" / "dk"


def test_token_file_is_private(tmp_path):
    home = Home(tmp_path)
    home.save_token("a.b.c")
    assert home.load_token() == "a.b.c"
    assert stat.S_IMODE(home.token_path.stat().st_mode) == 0o600
    home.forget_token()
    assert home.load_token() is None


def _jwt(claims: dict) -> str:
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part(claims)}.sig"


def test_stored_token_used_only_while_current_and_for_this_user(tmp_path):
    ident = Identity.generate("alice")
    client = Client(tmp_path, identity=ident)
    assert client._token_usable(_jwt({"user_id": "alice", "exp": time.time() + 3600}))
    assert not client._token_usable(_jwt({"user_id": "alice", "exp": time.time()}))
    assert not client._token_usable(_jwt({"user_id": "bob", "exp": time.time() + 3600}))
    assert not client._token_usable("garbage")
    assert token_claims("x.!!!.y") == {}


def test_backoff_grows_exponentially_with_jitter_and_caps():
    low = Backoff(initial=1.0, maximum=8.0, rng=lambda: 0.0)
    assert [low.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    high = Backoff(initial=1.0, maximum=8.0, rng=lambda: 1.0)
    assert [high.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    high.reset()
    assert high.next_delay() == 1.0
    real = Backoff(initial=1.0, maximum=30.0)
    delays = [real.next_delay() for _ in range(3)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0


def test_spool_keeps_frames_in_order_until_taken(tmp_path):
    home = Home(tmp_path)
    home.spool([{"id": 1}, {"id": 2}])
    home.spool([{"id": 3}])
    assert stat.S_IMODE(home.inbox_path.stat().st_mode) == 0o600
    assert [f["id"] for f in home.take_spooled()] == [1, 2, 3]
    assert home.take_spooled() == []


def test_seen_ids_are_per_server(tmp_path):
    home = Home(tmp_path)
    home.save_seen("https://a", [1, 2])
    assert home.load_seen("https://a") == [1, 2]
    assert home.load_seen("https://b") == []


@pytest.mark.parametrize(
    ("user_id", "ok"),
    [
        ("alice", True),
        ("x" * 128, True),
        ("", False),
        ("x" * 129, False),
        ("a/b", False),
        ("a b", False),
        ("a\x00", False),
        ("system", False),
        ("broadcast", False),
    ],
)
def test_user_id_validation_matches_protocol(user_id, ok):
    assert (validate_user_id(user_id) is None) is ok


def test_server_urls():
    assert normalize_server("dk.example:8443/") == "https://dk.example:8443"
    assert (
        ws_url("https://dk.example/base", "a+b")
        == "wss://dk.example/base/ws?token=a%2Bb"
    )
    assert ws_url("http://h:1", "t") == "ws://h:1/ws?token=t"
