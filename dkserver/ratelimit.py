"""Token-bucket rate limits keyed by user id (messages) or client IP (login).

Buckets refill lazily from the clock's elapsed time whenever they are used,
so the rate is exact however rarely anything else runs.  A bucket that has
refilled to capacity is indistinguishable from no bucket, so a periodic
``refill_and_prune`` deletes those: memory follows the number of recently
active keys, and because buckets are keyed by user id rather than connection,
reconnecting does not reset a drained bucket.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


async def settled(value: Any) -> Any:
    """``value``, or its result if it is a Deferred.

    The limits, caps and challenges of one node answer at once; those shared
    between nodes (dkserver.cluster, through Redis) answer later.  Callers
    off the hot path accept both through this.
    """
    if isinstance(value, Deferred):
        return await value
    return value


# Absorbs float rounding, so that e.g. ten refills of 0.1 token add up to one.
_EPSILON = 1e-9


@dataclass(slots=True)
class TokenBucket:
    """Tokens available as of ``updated`` (a time on the registry's clock)."""

    tokens: float
    updated: float

    def refill(self, now: float, rate: float, burst: float) -> None:
        """Add the tokens earned since ``updated``, up to ``burst``.

        If the clock stepped backwards nothing is added; the reference time
        just moves, so only forward time ever refills a bucket.
        """
        elapsed = now - self.updated
        if elapsed > 0:
            self.tokens = min(burst, self.tokens + elapsed * rate)
        self.updated = now


class BucketRegistry:
    """One token bucket per key: ``rate`` tokens per second, capacity ``burst``.

    When ``max_buckets`` is reached, the least recently used bucket is evicted.
    It has had the longest time to refill, so it is the one most likely to be
    full already (evicting a full bucket changes nothing); at worst a partly
    drained bucket is forgotten and its key starts again with a full burst --
    a bounded leniency under a flood of distinct keys instead of unbounded
    memory.  Choosing the exactly fullest bucket would cost a scan per insert.
    """

    log = Logger()

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: IReactorTime,
        max_buckets: int = 1_000_000,
    ) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number, not {rate!r}")
        if not (isinstance(burst, int | float) and math.isfinite(burst) and burst >= 1):
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, not {max_buckets!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._max = max_buckets
        # Least recently used first.
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        #: Buckets dropped because the registry was full (for metrics).
        self.evictions = 0
        #: Buckets deleted by `refill_and_prune` because they were full again
        #: (for metrics: dkserver_rate_limit_evictions_total).
        self.pruned = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def tokens(self, key: str) -> float:
        """Tokens ``key`` could spend now (``burst`` for an unknown key)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst
        elapsed = max(0.0, self._clock.seconds() - bucket.updated)
        return min(self.burst, bucket.tokens + elapsed * self.rate)

    def retry_after(self, key: str, cost: float = 1.0) -> float:
        """Seconds until ``key``'s bucket holds ``cost`` tokens (0: now)."""
        return max(0.0, (cost - self.tokens(key)) / self.rate)

    def try_take(self, key: str, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens from ``key``'s bucket if it has them."""
        if not (math.isfinite(cost) and cost >= 0):
            raise ValueError(f"cost must be a non-negative number, not {cost!r}")
        now = self._clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room()
            bucket = self._buckets[key] = TokenBucket(self.burst, now)
        else:
            bucket.refill(now, self.rate, self.burst)
            self._buckets.move_to_end(key)
        if bucket.tokens + _EPSILON >= cost:
            bucket.tokens = max(0.0, bucket.tokens - cost)
            return True
        return False

    def refill_and_prune(self) -> int:
        """Refill every bucket and delete the full ones; return how many.

        O(number of buckets); run it every few seconds to minutes.
        """
        now = self._clock.seconds()
        full = []
        for key, bucket in self._buckets.items():
            bucket.refill(now, self.rate, self.burst)
            if bucket.tokens + _EPSILON >= self.burst:
                full.append(key)
        for key in full:
            del self._buckets[key]
        self.pruned += len(full)
        return len(full)

    def _make_room(self) -> None:
        while len(self._buckets) >= self._max:
            self._buckets.popitem(last=False)
            self.evictions += 1
            if self.evictions == 1 or self.evictions % 10_000 == 0:
                self.log.warn(
                    "rate-limit registry full ({max} buckets); evicted the least "
                    "recently used ({evictions} evictions so far)",
                    max=self._max,
                    evictions=self.evictions,
                )


class _SafeRefill:
    """The TimerService's function: must never raise.

    A LoopingCall whose function raises stops for good, which would leave
    the registry growing until the process restarts.
    """

    log = Logger()

    def __init__(self, registry: BucketRegistry) -> None:
        self.registry = registry

    def __call__(self) -> None:
        try:
            removed = self.registry.refill_and_prune()
        except Exception:
            self.log.failure("rate-limit refill failed; retrying at the next tick")
            return
        if removed:
            self.log.debug("pruned {removed} full rate-limit buckets", removed=removed)


def make_refill_service(
    registry: BucketRegistry,
    interval: float,
    clock: IReactorTime,
    name: str | None = None,
) -> TimerService:
    """A TimerService that runs ``registry.refill_and_prune`` every ``interval``.

    Attach it with ``setServiceParent``; give each registry's service a
    distinct ``name`` if named (a MultiService refuses duplicates).
    """
    if not (math.isfinite(interval) and interval > 0):
        raise ValueError(f"interval must be a positive number, not {interval!r}")
    service = TimerService(interval, _SafeRefill(registry))
    # TimerService reads .clock when it starts (falls back to the global reactor).
    service.clock = clock
    if name is not None:
        service.setName(name)
    return service
