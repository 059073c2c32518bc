"""FirstPageReads: connects' first backlog reads gathered into few trips, on
each backend, each read's answer what it would be alone."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from dkserver.store import StoreUnavailable
from dkserver.store.backlog import FirstPageReads
from tests.store.test_store_messages import msg, register
from tests.support.db import recorded_interactions

USERS = ("ann", "bob", "cat", "dan", "eve")


class Recorded:
    """The real MessageStore, with the user ids of each trip it is asked
    for; ``hold``, when set, holds the next trip at its start until it fires."""

    def __init__(self, messages) -> None:
        self.messages = messages
        self.trips: list[list[str]] = []
        self.hold: Deferred | None = None

    async def _trip(self, user_ids: list[str]) -> None:
        self.trips.append(user_ids)
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold

    async def backlog_first_pages_many(self, reads):
        await self._trip([user_id for user_id, _ in reads])
        return await self.messages.backlog_first_pages_many(reads)

    async def backlog_first_pages(self, user_id, limit):
        await self._trip([user_id])
        return await self.messages.backlog_first_pages(user_id, limit)


class Counts:
    """What the metrics would count: reads asked for, transactions."""

    def __init__(self) -> None:
        self.reads = self.trips = 0

    def read(self) -> None:
        self.reads += 1

    def trip(self) -> None:
        self.trips += 1


async def backlogs(store):
    """Each user with two direct messages; one broadcast for all but its sender."""
    await register(store, *USERS)
    sent = [msg(USERS[(i + 1) % 5], u, f"to {u}") for i, u in enumerate(USERS)] * 2
    await store.messages.add_many([*sent, msg("ann", "broadcast", "all")])


def turn() -> Deferred:
    """Fires after the reactor's calls due now (a trip's start among them)."""
    return deferLater(reactor, 0, lambda: None)


async def gathered(reads: FirstPageReads, users) -> list:
    results = await DeferredList([reads.read(u, 10) for u in users], consumeErrors=True)
    return [value for _, value in results]


async def alone(store, users) -> list:
    return [await store.messages.backlog_first_pages(u, 10) for u in users]


@pytest_twisted.ensureDeferred
async def test_reads_asked_in_one_turn_go_in_one_trip(store):
    await backlogs(store)
    recorded = Recorded(store.messages)
    counts = Counts()
    reads = FirstPageReads(recorded, reactor, on_read=counts.read, on_trip=counts.trip)
    with recorded_interactions(store.messages._pool) as transactions:
        results = await gathered(reads, USERS)
    assert transactions == ["_backlog_first_many_txn"]
    assert recorded.trips == [list(USERS)]
    assert (counts.reads, counts.trips) == (5, 1)
    assert results == await alone(store, USERS)
    # Every user had two direct messages and (but its sender) the broadcast.
    assert [len(direct) for direct, _ in results] == [2] * 5
    assert [len(b) for _, b in results] == [0, 1, 1, 1, 1]
    assert results[1][1][0].content == "all"


@pytest_twisted.ensureDeferred
async def test_reads_asked_while_the_trip_is_busy_go_together_next(store):
    await backlogs(store)
    recorded = Recorded(store.messages)
    recorded.hold = hold = Deferred()
    reads = FirstPageReads(recorded, reactor)
    first = reads.read("ann", 10)
    await turn()  # the first trip starts, alone, and is held
    rest = [reads.read(u, 10) for u in USERS[1:]]
    await turn()
    assert recorded.trips == [["ann"]]  # one trip at a time (SQLite's)
    hold.callback(None)
    results = [await first] + [await d for d in rest]
    assert recorded.trips == [["ann"], list(USERS[1:])]
    assert results == await alone(store, USERS)


@pytest_twisted.ensureDeferred
async def test_a_trip_takes_at_most_max_reads_and_trips_run_side_by_side(store):
    await backlogs(store)
    recorded = Recorded(store.messages)
    reads = FirstPageReads(recorded, reactor, max_reads=2)
    assert await gathered(reads, USERS) == await alone(store, USERS)
    assert recorded.trips == [["ann", "bob"], ["cat", "dan"], ["eve"]]
    recorded.trips.clear()
    # The first trip waits; the second goes beside it.
    recorded.hold = hold = Deferred()
    reads = FirstPageReads(recorded, reactor, trips=2, max_reads=2)
    pending = [reads.read(u, 10) for u in USERS]
    await turn()
    assert recorded.trips[:2] == [["ann", "bob"], ["cat", "dan"]]
    hold.callback(None)
    results = [await d for d in pending]
    assert recorded.trips[2:] == [["eve"]]
    assert results == await alone(store, USERS)


@pytest_twisted.ensureDeferred
async def test_a_read_that_fails_fails_alone(store):
    """One read's error (here a user id the driver cannot bind) reaches its
    caller; the others in its trip are read again one by one and answered."""
    await backlogs(store)
    recorded = Recorded(store.messages)
    counts = Counts()
    reads = FirstPageReads(recorded, reactor, on_read=counts.read, on_trip=counts.trip)
    asked = ["ann", object(), "cat"]
    results = await DeferredList([reads.read(u, 10) for u in asked], consumeErrors=True)
    assert [ok for ok, _ in results] == [True, False, True]
    assert isinstance(results[1][1].value, Exception)
    assert [results[0][1], results[2][1]] == await alone(store, ["ann", "cat"])
    # The trip of three, then each read alone.
    assert recorded.trips[0][0::2] == ["ann", "cat"] and len(recorded.trips) == 4
    # Nothing is left waiting: the next read gets its own trip as usual.
    assert await gathered(reads, ["dan"]) == await alone(store, ["dan"])
    # Four reads asked for; the failed trip, three alone, dan's.
    assert (counts.reads, counts.trips) == (4, 5)


@pytest_twisted.ensureDeferred
async def test_trips_side_by_side_over_the_same_users_do_not_deadlock(store):
    """Each read of a trip may raise its user's broadcast floor, a row lock
    held until the trip commits (PostgreSQL): two trips over the same users
    in opposite orders must not wait for each other (nor fall back to reads
    one by one)."""
    users = [f"u{i:02d}" for i in range(64)]
    await register(store, "ann", *users)
    # Ids below the broadcast's, so that each read raises its user's floor.
    earlier = [msg("u00", "ann", "x")] * 3
    await store.messages.add_many([*earlier, msg("ann", "broadcast", "all")])
    recorded = Recorded(store.messages)
    reads = FirstPageReads(recorded, reactor, trips=2, max_reads=64)
    results = await gathered(reads, users + users[::-1])
    assert len(recorded.trips) == 2
    assert all(not isinstance(r, Exception) for r in results)
    assert [len(b) for _, b in results] == [1] * 128
    assert results == await alone(store, users + users[::-1])


@pytest_twisted.ensureDeferred
async def test_a_read_asked_for_by_an_answered_one_is_answered(store):
    """A caller's callback runs inside the trip; a read it asks for then
    waits for the trip to end, and gets one of its own."""
    await backlogs(store)
    recorded = Recorded(store.messages)
    reads = FirstPageReads(recorded, reactor)
    again = []
    first = reads.read("ann", 10)
    first.addCallback(lambda result: again.append(reads.read("bob", 10)) or result)
    assert await first == (await alone(store, ["ann"]))[0]
    assert await again[0] == (await alone(store, ["bob"]))[0]
    assert recorded.trips == [["ann"], ["bob"]]


class Unavailable:
    """A database that is down: every trip fails as the pool's would."""

    def __init__(self) -> None:
        self.alone = 0

    async def backlog_first_pages_many(self, reads):
        raise StoreUnavailable("connection refused")

    async def backlog_first_pages(self, user_id, limit):
        self.alone += 1
        raise StoreUnavailable("connection refused")


@pytest_twisted.ensureDeferred
async def test_an_outage_fails_every_read_of_the_trip_at_once():
    """Read by read would only wait out as many timeouts as there are reads."""
    down = Unavailable()
    reads = FirstPageReads(down, reactor)
    results = await DeferredList([reads.read(u, 10) for u in USERS], consumeErrors=True)
    assert [ok for ok, _ in results] == [False] * 5
    assert all(f.check(StoreUnavailable) for _, f in results)
    assert down.alone == 0
