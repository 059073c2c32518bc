"""dkserver.auth.revocation: the in-memory map and the watch that polls."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.task import Clock

from dkserver.auth.revocation import (
    CLOSE_ACCOUNT_CLOSED,
    CLOSE_TOKEN_REVOKED,
    AccountWatch,
    Revocations,
)
from dkserver.store.accounts import Revoked
from dkserver.store.errors import StoreUnavailable


def test_refusal_by_status_and_cut_off():
    r = Revocations()
    changed = r.replace(
        [
            Revoked("banned", "banned", 5),
            Revoked("gone", "deleted", None),
            Revoked("cut", "active", 2_000),
        ]
    )
    assert changed == {"banned", "gone", "cut"}
    assert r.refusal("banned", 10.0) == "banned"
    assert r.refusal("gone", None) == "deleted"
    assert r.refusal("cut", 1.999) == "revoked"
    assert r.refusal("cut", None) == "revoked"  # a token without iat
    assert r.refusal("cut", 2.0) is None  # issued in the cut-off's millisecond
    assert r.refusal("cut", float("inf")) is None
    assert r.refusal("someone", 0.0) is None
    assert r.replace([Revoked("cut", "active", 2_000)]) == {"banned", "gone"}


class FakeAccounts:
    def __init__(self):
        self.version = ("a1", "s1")
        self.rows: list[Revoked] = []
        self.fail = False

    async def versions(self):
        if self.fail:
            raise StoreUnavailable("down")
        return self.version

    async def revoked(self):
        return list(self.rows)


class FakeUsers:
    forgotten = 0

    def forget(self):
        self.forgotten += 1


class FakeStore:
    def __init__(self):
        self.accounts = FakeAccounts()
        self.users = FakeUsers()


class FakeConn:
    def __init__(self, user_id, iat):
        self.user_id, self.token_iat, self.closed = user_id, iat, None

    def revoke(self, code, reason):
        self.closed = (code, reason)


class FakeBus:
    def __init__(self, conns):
        self.conns = conns

    def connections(self, user_id):
        return tuple(c for c in self.conns if c.user_id == user_id)


@pytest_twisted.ensureDeferred
async def test_watch_applies_changes_closes_connections_and_survives_failures():
    store = FakeStore()
    old, new, other = FakeConn("alice", 1.0), FakeConn("alice", 9.0), FakeConn("bob", 1)
    reloads = []

    async def reload_keys():
        reloads.append(True)

    r = Revocations()
    watch = AccountWatch(store, r, FakeBus([old, new, other]), reload_keys)
    assert watch.tick() is None  # nothing before the first load
    await watch.load()
    await watch.tick()
    assert store.users.forgotten == 0 and not reloads

    store.accounts.rows = [Revoked("alice", "active", 5_000)]
    store.accounts.version = ("a2", "s1")
    await watch.tick()
    assert old.closed == (CLOSE_TOKEN_REVOKED, "token revoked")
    assert new.closed is None and other.closed is None
    assert store.users.forgotten == 1

    store.accounts.fail = True
    await watch.tick()  # logged, not raised: the TimerService keeps running
    store.accounts.fail = False
    store.accounts.rows = [Revoked("alice", "banned", 5_000)]
    store.accounts.version = ("a3", "s2")
    await watch.tick()
    assert new.closed == (CLOSE_ACCOUNT_CLOSED, "account banned")
    assert reloads == [True]


def test_watch_service_runs_on_the_injected_clock():
    clock = Clock()
    watch = AccountWatch(FakeStore(), Revocations(), FakeBus([]), None)
    service = watch.service(0.5, clock)
    service.startService()
    clock.advance(0.5)
    clock.advance(0.5)
    service.stopService()
    assert watch.polls == 0  # not loaded yet: the ticks did nothing
