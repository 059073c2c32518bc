"""Invite codes are passed on the command line (``dkserver invite revoke
CODE``), so none may begin with ``-``, which argparse reads as an option."""

from __future__ import annotations

from dkserver.store import accounts


def test_a_drawn_code_that_begins_with_a_dash_is_drawn_again(monkeypatch):
    draws = iter(["-first", "--second", "third-ok"])
    monkeypatch.setattr(accounts.secrets, "token_urlsafe", lambda n: next(draws))
    assert accounts.new_invite_code() == "third-ok"


def test_real_codes_are_24_url_safe_characters_without_a_leading_dash():
    codes = {accounts.new_invite_code() for _ in range(2000)}
    assert len(codes) == 2000
    assert all(len(c) == 24 and not c.startswith("-") for c in codes)
