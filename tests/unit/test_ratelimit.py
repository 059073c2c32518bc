"""Token buckets and their refill service, driven by a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from dkserver.ratelimit import BucketRegistry, TokenBucket, make_refill_service


@pytest.fixture
def clock() -> Clock:
    return Clock()


def drain(registry: BucketRegistry, key: str) -> int:
    taken = 0
    while registry.try_take(key):
        taken += 1
        assert taken <= 10_000
    return taken


def test_burst_then_refusal(clock: Clock) -> None:
    registry = BucketRegistry(rate=5.0, burst=10, clock=clock)
    assert [registry.try_take("alice") for _ in range(11)] == [True] * 10 + [False]
    assert registry.try_take("alice") is False


def test_keys_have_independent_buckets(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=2, clock=clock)
    assert drain(registry, "alice") == 2
    assert registry.try_take("bob") is True


def test_refill_follows_the_rate_exactly(clock: Clock) -> None:
    registry = BucketRegistry(rate=5.0, burst=10, clock=clock)
    drain(registry, "alice")
    clock.advance(0.19)
    assert registry.try_take("alice") is False
    clock.advance(0.01)  # 0.2 s at 5/s is one token
    assert registry.try_take("alice") is True
    assert registry.try_take("alice") is False
    clock.advance(1.0)
    assert drain(registry, "alice") == 5


def test_many_small_advances_add_up(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=10, clock=clock)
    drain(registry, "alice")
    for _ in range(10):
        clock.advance(0.1)
        registry.try_take("bob")  # unrelated activity
    assert registry.try_take("alice") is True
    assert registry.try_take("alice") is False


def test_refill_caps_at_burst(clock: Clock) -> None:
    registry = BucketRegistry(rate=5.0, burst=10, clock=clock)
    registry.try_take("alice")
    clock.advance(3600)
    assert drain(registry, "alice") == 10


def test_only_time_refills_a_bucket(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=3, clock=clock)
    drain(registry, "alice")
    # Refused attempts, pruning and other keys do not add tokens.
    for _ in range(5):
        assert registry.try_take("alice") is False
    registry.refill_and_prune()
    registry.try_take("bob")
    assert registry.try_take("alice") is False
    assert "alice" in registry
    assert registry.tokens("alice") == 0.0


def test_clock_stepping_back_does_not_refill(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=3, clock=clock)
    clock.advance(100)
    drain(registry, "alice")
    clock.rightNow = 50.0
    assert registry.try_take("alice") is False
    clock.rightNow = 51.0
    assert registry.try_take("alice") is True


def test_cost_above_one_and_above_burst(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=5, clock=clock)
    assert registry.try_take("k", cost=4) is True
    assert registry.try_take("k", cost=2) is False
    assert registry.try_take("k", cost=1) is True
    assert registry.try_take("other", cost=6) is False
    with pytest.raises(ValueError):
        registry.try_take("k", cost=-1)


def test_prune_removes_only_full_buckets(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=4, clock=clock)
    registry.try_take("one")  # 3 left, full after 1 s
    registry.try_take("three", cost=3)  # 1 left, full after 3 s
    registry.try_take("four", cost=4)  # 0 left, full after 4 s
    clock.advance(1)
    assert registry.refill_and_prune() == 1
    assert "one" not in registry and len(registry) == 2
    clock.advance(2)
    assert registry.refill_and_prune() == 1
    assert "three" not in registry
    assert "four" in registry
    assert registry.tokens("four") == 3.0
    clock.advance(1)
    assert registry.refill_and_prune() == 1
    assert len(registry) == 0


def test_pruned_bucket_behaves_like_a_full_one(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=2, clock=clock)
    drain(registry, "alice")
    clock.advance(2)
    assert registry.refill_and_prune() == 1
    assert drain(registry, "alice") == 2


def test_full_registry_evicts_least_recently_used(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=2, clock=clock, max_buckets=3)
    for key in ("a", "b", "c"):
        drain(registry, key)
        clock.advance(0.1)
    registry.try_take("a")  # "a" is now most recently used; "b" is oldest
    registry.try_take("d")
    assert len(registry) == 3
    assert registry.evictions == 1
    assert "b" not in registry
    assert {"a", "c", "d"} <= {k for k in ("a", "b", "c", "d") if k in registry}


def test_flood_of_keys_stays_bounded(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=2, clock=clock, max_buckets=50)
    for i in range(5000):
        registry.try_take(f"10.0.{i // 256}.{i % 256}")
    assert len(registry) == 50


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0, 10), (-1, 10), (float("nan"), 10), (float("inf"), 10), (5, 0), (5, -3)],
)
def test_nonsense_limits_are_refused(clock: Clock, rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        BucketRegistry(rate=rate, burst=burst, clock=clock)


def test_token_bucket_refill() -> None:
    bucket = TokenBucket(tokens=0.0, updated=10.0)
    bucket.refill(12.0, rate=0.5, burst=5)
    assert bucket.tokens == 1.0 and bucket.updated == 12.0
    bucket.refill(100.0, rate=0.5, burst=5)
    assert bucket.tokens == 5.0


# The refill service


def test_refill_service_prunes_on_the_injected_clock(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=2, clock=clock)
    drain(registry, "alice")
    service = make_refill_service(registry, 5.0, clock, name="message-ratelimit")
    assert service.name == "message-ratelimit"
    service.startService()
    try:
        assert len(registry) == 1  # ran once at start; not full yet
        clock.advance(5)
        assert len(registry) == 0
    finally:
        service.stopService()
    assert clock.getDelayedCalls() == []


def test_refill_service_survives_an_exception(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = BucketRegistry(rate=1.0, burst=2, clock=clock)
    calls = []

    def boom() -> int:
        calls.append(clock.seconds())
        raise RuntimeError("boom")

    monkeypatch.setattr(registry, "refill_and_prune", boom)
    service = make_refill_service(registry, 1.0, clock)
    with capturedLogs() as events:
        service.startService()
        for _ in range(3):
            clock.advance(1)
    assert calls == [0.0, 1.0, 2.0, 3.0]
    assert service._loop.running
    failures = [e for e in events if e["log_level"] == LogLevel.critical]
    assert len(failures) == 4
    assert failures[0]["log_failure"].check(RuntimeError)

    monkeypatch.undo()  # the real method works again on the next tick
    drain(registry, "alice")
    clock.advance(1)
    clock.advance(2)
    assert len(registry) == 0
    service.stopService()


def test_refill_service_rejects_bad_interval(clock: Clock) -> None:
    registry = BucketRegistry(rate=1.0, burst=2, clock=clock)
    with pytest.raises(ValueError):
        make_refill_service(registry, 0, clock)
