"""FirstPageReads: connects' first backlog reads gathered into few trips, on
each backend, each read's answer what it would be alone."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater

from dkserver.store.backlog import FirstPageReads
from tests.store.test_store_messages import msg, register

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
    reads = FirstPageReads(recorded, reactor)
    results = await gathered(reads, USERS)
    assert recorded.trips == [list(USERS)]
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
    reads = FirstPageReads(recorded, reactor)
    asked = ["ann", object(), "cat"]
    results = await DeferredList([reads.read(u, 10) for u in asked], consumeErrors=True)
    assert [ok for ok, _ in results] == [True, False, True]
    assert isinstance(results[1][1].value, Exception)
    assert [results[0][1], results[2][1]] == await alone(store, ["ann", "cat"])
    # The trip of three, then each read alone.
    assert recorded.trips[0][0::2] == ["ann", "cat"] and len(recorded.trips) == 4
    # Nothing is left waiting: the next read gets its own trip as usual.
    assert await gathered(reads, ["dan"]) == await alone(store, ["dan"])
