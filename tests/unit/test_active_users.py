"""/active-users from memory (dkserver.web.presence): what is cached, and how
it is invalidated.

Fakes with a `task.Clock`: the user list's loads are Deferreds the test
fires, the bus is a set of online users with a presence version.
"""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dkserver.store import StoreUnavailable
from dkserver.store.users import encode_user_id
from dkserver.web.presence import USER_LIST_MAX_AGE, ActiveUsers
from dkserver.ws.sessions import LocalBus


class FakeUsers:
    """The database's users; each load is a Deferred fired by `finish`."""

    def __init__(self, ids) -> None:
        self.ids = set(ids)
        self.loads: list[Deferred] = []
        self.callbacks = []

    def on_registered(self, callback) -> None:
        self.callbacks.append(callback)

    def all_ids_encoded(self) -> Deferred:
        d: Deferred = Deferred()
        self.loads.append(d)
        return d

    def finish(self, snapshot=None) -> None:
        ids = sorted(self.ids if snapshot is None else snapshot)
        self.loads.pop(0).callback((ids, [encode_user_id(u) for u in ids]))

    def fail(self) -> None:
        self.loads.pop(0).errback(StoreUnavailable("database down"))

    def register(self, user_id: str) -> None:
        self.ids.add(user_id)
        for callback in self.callbacks:
            callback(user_id)


class Conn:
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id


def body_of(d: Deferred) -> dict:
    assert d.called, "the body waited"
    return orjson.loads(d.result)


def request(active: ActiveUsers) -> Deferred:
    return Deferred.fromCoroutine(active.body())


@pytest.fixture
def w():
    """The fakes, after the first request's load (``w.first``)."""
    clock = Clock()
    users = FakeUsers(["carol", "alice", "bob", "dave"])
    bus = LocalBus()
    active = ActiveUsers(users, bus, clock)
    first = request(active)
    assert not first.called  # the first request waits for the one load
    users.finish()
    return SimpleNamespace(
        clock=clock, users=users, bus=bus, active=active, first=first
    )


def test_everyone_listed_once_in_user_id_order_online_from_the_bus(w):
    users, bus, active = w.users, w.bus, w.active
    everyone = ["alice", "bob", "carol", "dave"]
    assert body_of(w.first) == {"online": [], "offline": everyone}
    bus.add(Conn("dave"))
    bus.add(Conn("bob"))
    bus.add(Conn("bob"))
    assert body_of(request(active)) == {
        "online": ["bob", "dave"],
        "offline": ["alice", "carol"],
    }
    assert len(users.loads) == 0  # presence needed no database


def test_the_body_is_reused_until_presence_or_the_user_list_changes(w):
    bus, active = w.bus, w.active
    renders = active.renders
    for _ in range(5):
        body_of(request(active))
    assert active.renders == renders  # nothing changed: the same bytes

    alice = Conn("alice")
    bus.add(alice)
    assert body_of(request(active))["online"] == ["alice"]
    second = Conn("alice")
    bus.add(second)  # a second connection: presence is unchanged
    body_of(request(active))
    assert active.renders == renders + 1
    bus.remove(alice)
    assert body_of(request(active))["online"] == ["alice"]
    bus.remove(second)
    assert body_of(request(active)) == {
        "online": [],
        "offline": ["alice", "bob", "carol", "dave"],
    }
    assert active.renders == renders + 2


def test_a_local_registration_appears_at_once_without_a_reload(w):
    users, active = w.users, w.active
    users.register("bert")
    assert body_of(request(active))["offline"] == [
        "alice",
        "bert",
        "bob",
        "carol",
        "dave",
    ]
    assert active.loads == 1 and not users.loads


def test_an_online_user_the_list_does_not_know_yet_is_listed_online(w):
    bus, active = w.bus, w.active
    bus.add(Conn("erin"))  # registered through another node, list not reloaded
    body = body_of(request(active))
    assert body["online"] == ["erin"]
    assert "erin" not in body["offline"]


def test_an_old_list_is_reloaded_in_the_background_keeping_registrations(w):
    clock, users, active = w.clock, w.users, w.active
    users.ids.add("zoe")  # registered elsewhere (another node, the CLI)
    assert "zoe" not in body_of(request(active))["offline"]
    assert not users.loads  # young enough: no reload
    clock.advance(USER_LIST_MAX_AGE)
    stale = request(active)  # answered at once from the old copy ...
    assert "zoe" not in body_of(stale)["offline"]
    assert len(users.loads) == 1  # ... while one reload runs
    body_of(request(active))
    assert len(users.loads) == 1  # not two at once
    # A registration here while the reload's snapshot was taken before it.
    snapshot = set(users.ids)
    users.register("yann")
    users.finish(snapshot)
    offline = body_of(request(active))["offline"]
    assert "zoe" in offline and "yann" in offline
    assert offline == sorted(offline)


def test_a_failed_first_load_fails_the_request_and_the_next_one_retries():
    users = FakeUsers(["alice"])
    active = ActiveUsers(users, LocalBus(), Clock())
    d = request(active)
    users.fail()
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(StoreUnavailable)
    again = request(active)
    users.finish()
    assert body_of(again) == {"online": [], "offline": ["alice"]}


def test_a_failed_reload_keeps_serving_the_copy_loaded_before(w):
    clock, users, active = w.clock, w.users, w.active
    clock.advance(USER_LIST_MAX_AGE)
    before = body_of(request(active))
    users.fail()
    assert body_of(request(active)) == before
    assert not users.loads  # the next try waits another max age
    clock.advance(USER_LIST_MAX_AGE)
    body_of(request(active))
    assert len(users.loads) == 1


def test_ids_that_need_escaping_come_back_as_they_are():
    odd = ['quo"te', "back\\slash", "caf\u00e9", "tab\there", "\U0001f600"]
    users = FakeUsers(odd)
    bus = LocalBus()
    active = ActiveUsers(users, bus, Clock())
    d = request(active)
    users.finish()
    assert body_of(d) == {"online": [], "offline": sorted(odd)}
    bus.add(Conn('quo"te'))
    users.register("new\u2028line")
    body = body_of(request(active))
    assert body["online"] == ['quo"te']
    assert set(body["offline"]) == set(odd) - {'quo"te'} | {"new\u2028line"}
