"""Readiness on a fake clock: which part is named, how often it commits."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from dkserver.health import Readiness
from dkserver.store.errors import StoreUnavailable


class FakeWriter:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.closed = False
        self.busy_since: float | None = None
        self.last_commit: float | None = None
        self.last_failure: tuple[float, str] | None = None
        self.probes: list[Deferred] = []

    def probe(self) -> Deferred:
        d: Deferred = Deferred()
        self.probes.append(d)
        return d

    def commit_probe(self) -> None:
        self.last_commit = self.clock.seconds()
        self.probes.pop(0).callback(None)


class FakeRedis:
    connected = True
    subscribed = True


def readiness(clock, writer, redis=None, migrated=True, closing=False):
    return Readiness(
        writer,
        clock,
        migrated=lambda: migrated,
        closing=lambda: closing,
        redis=redis,
    )


def results(d: Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def check(r: Readiness) -> list:
    return results(Deferred.fromCoroutine(r.check()))


def test_a_recent_commit_is_enough_and_nothing_is_written():
    clock = Clock()
    clock.advance(100)
    writer = FakeWriter(clock)
    writer.last_commit = 99.0
    (verdict,) = check(readiness(clock, writer))
    assert verdict.ready
    assert writer.probes == []


def test_an_idle_writer_commits_one_probe_for_all_concurrent_checks():
    clock = Clock()
    writer = FakeWriter(clock)
    r = readiness(clock, writer)
    first, second = check(r), check(r)
    assert len(writer.probes) == 1 and first == [] and second == []
    writer.commit_probe()
    assert first[0].ready and second[0].ready


def test_a_probe_that_does_not_commit_in_time_names_the_database():
    clock = Clock()
    writer = FakeWriter(clock)
    r = readiness(clock, writer)
    result = check(r)
    writer.busy_since = clock.seconds()  # the heartbeat's batch is in the database
    clock.advance(r.probe_timeout + 0.1)
    writer.busy_since = None  # ... and gets no further
    (verdict,) = result
    assert not verdict.ready
    assert verdict.failing[0][0] == "database"
    assert "did not finish" in verdict.describe()
    # The queued probe still ends the outage when it commits.
    writer.commit_probe()
    assert check(r)[0].ready


def test_a_failed_commit_after_the_last_good_one_is_checked_again():
    clock = Clock()
    clock.advance(10)
    writer = FakeWriter(clock)
    writer.last_commit = 9.0
    writer.last_failure = (9.5, "disk full")
    r = readiness(clock, writer)
    result = check(r)
    assert len(writer.probes) == 1  # not trusted: the last commit failed
    writer.probes.pop().errback(Failure(StoreUnavailable("database is gone")))
    (verdict,) = result
    assert verdict.failing == (
        ("database", "a commit failed: database unavailable: database is gone"),
    )


def test_a_stuck_commit_names_the_writer():
    clock = Clock()
    clock.advance(50)
    writer = FakeWriter(clock)
    writer.last_commit = 50.0
    writer.busy_since = 40.0
    (verdict,) = check(readiness(clock, writer))
    assert verdict.failing == (("writer", "a commit has been running for 10 s"),)


def test_closed_writer_and_shutdown_are_not_ready():
    clock = Clock()
    writer = FakeWriter(clock)
    writer.closed = True
    writer.last_commit = 0.0
    (verdict,) = check(readiness(clock, writer, closing=True))
    parts = [part for part, _ in verdict.failing]
    assert parts == ["server", "writer"]


def test_before_migrations_the_database_is_starting():
    clock = Clock()
    writer = FakeWriter(clock)
    (verdict,) = check(readiness(clock, writer, migrated=False))
    assert verdict.failing == (("database", "starting (migrations not finished)"),)
    assert writer.probes == []


def test_redis_disconnected_or_unsubscribed_names_redis():
    clock = Clock()
    writer = FakeWriter(clock)
    writer.last_commit = 0.0
    redis = FakeRedis()
    r = readiness(clock, writer, redis=redis)
    assert check(r)[0].ready
    redis.subscribed = False
    assert check(r)[0].failing == (("redis", "subscriber not connected"),)
    redis.connected = False
    assert check(r)[0].failing == (("redis", "not connected"),)


def test_a_heartbeat_that_never_got_into_a_batch_names_the_writer():
    clock = Clock()
    writer = FakeWriter(clock)
    r = readiness(clock, writer)
    result = check(r)
    clock.advance(r.probe_timeout + 0.1)  # busy_since stayed None: not started
    (verdict,) = result
    assert [part for part, _ in verdict.failing] == ["writer"]
    assert "not started" in verdict.describe()
