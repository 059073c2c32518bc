"""Prometheus metrics, one registry per server instance.

A registry of its own (rather than prometheus_client's global one) lets tests
and the ``.tac`` build several services in one process.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Info,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dkserver import __version__

__all__ = ["CONTENT_TYPE_LATEST", "LatencyHistogram", "Metrics"]

#: A group commit takes a millisecond or two on a quiet SQLite file, tens of
#: ms under load or with an fsync, seconds only when something is wrong.
COMMIT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Stored to proven read: tens of ms for a live recipient (the proof ping's
#: round trip, up to the outbox's PROOF_INTERVAL later under traffic), up to
#: hours or days for one who was offline.
DELIVERY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
    86400.0,
)


class LatencyHistogram(Collector):
    """A histogram in seconds, observed on the reactor thread only.

    prometheus_client's Histogram takes a lock per bucket update (~0.8 µs an
    observation); this one is a list of counts and ``bisect`` (~0.15 µs),
    which matters for delivery latency, observed once per recipient of every
    message.  Scrapes run on the reactor too, so nothing needs a lock.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        if not self.labelnames:
            self._unlabelled = self.labels()

    def labels(self, *values: str) -> _Child:
        """The child for these label values; resolve it once, then
        ``observe`` on it."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _Child(self.bounds)
        return child

    def observe(self, seconds: float) -> None:
        self._unlabelled.observe(seconds)

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=())]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(
            self.name, self.documentation, labels=self.labelnames
        )
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            bounds = (*self.bounds, math.inf)
            for bound, count in zip(bounds, child.counts, strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), cumulative))
            family.add_metric(list(values), buckets, child.sum)
        return [family]


class _Child:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        #: Per bucket (not cumulative), the last one +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float, _bisect=bisect.bisect_left) -> None:
        self.counts[_bisect(self._bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


class RateLimitCollector(Collector):
    """Rate-limit buckets, read from the registries at scrape time (plain
    integer attributes: nothing is counted on the hot path)."""

    def __init__(self) -> None:
        self.registries: Mapping[str, Any] = {}

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> tuple[CounterMetricFamily, GaugeMetricFamily]:
        evictions = CounterMetricFamily(
            "dkserver_rate_limit_evictions",
            "Rate-limit buckets dropped: 'refilled' (full again, pruned: "
            "changes nothing), 'full' (registry at its size bound: least "
            "recently used dropped, its key starts again with a full burst)",
            labels=["limit", "reason"],
        )
        buckets = GaugeMetricFamily(
            "dkserver_rate_limit_buckets",
            "Rate-limit buckets held in memory",
            labels=["limit"],
        )
        return evictions, buckets

    def collect(self) -> Iterable[Metric]:
        evictions, buckets = self._families()
        for name, registry in self.registries.items():
            evictions.add_metric([name, "refilled"], registry.pruned)
            evictions.add_metric([name, "full"], registry.evictions)
            buckets.add_metric([name], len(registry))
        return [evictions, buckets]


class Metrics:
    def __init__(self, node_id: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # dkserver_build_info{version="..."} 1: which release a scrape came
        # from, joinable with every other series (the Prometheus convention).
        self.build_info = Info("dkserver_build", "The running dkserver", registry=r)
        self.build_info.info({"version": __version__})
        # dkserver_node_info{node_id="..."} 1: which node of a cluster a
        # scrape came from (its series are that node's own, docs/analytics.md).
        self.node_info = Info("dkserver_node", "This dkserver node", registry=r)
        self.node_info.info({"node_id": node_id})
        self.messages = Counter(
            "dkserver_messages", "Messages accepted, by kind", ["kind"], registry=r
        )
        self.rate_limited = Counter(
            "dkserver_rate_limited_frames",
            "WebSocket frames dropped by the per-user rate limit",
            registry=r,
        )
        self.rate_limited_requests = Counter(
            "dkserver_rate_limited_requests",
            "REST requests refused with 429 by a per-IP request limit, by limit",
            ["limit"],
            registry=r,
        )
        self.auth_failures = Counter(
            "dkserver_auth_failures",
            "Failed logins and token checks",
            ["kind"],
            registry=r,
        )
        self.refused_upgrades = Counter(
            "dkserver_refused_upgrades",
            "WebSocket upgrades refused, by reason",
            ["reason"],
            registry=r,
        )
        self.quota_refused = Counter(
            "dkserver_pending_quota_refused_messages",
            "Direct messages refused because the recipient's pending quota was"
            " full (nothing stored)",
            registry=r,
        )
        # Retention (dkserver.retention): what this process's prune passes
        # deleted, per table, and the pending messages among them dropped
        # undelivered past DK_PENDING_MAX_DAYS.
        self.pruned_rows = Counter(
            "dkserver_pruned_rows",
            "Rows deleted by retention, by table",
            ["table"],
            registry=r,
        )
        self.pending_dropped = Counter(
            "dkserver_pending_messages_dropped",
            "Direct messages dropped undelivered after DK_PENDING_MAX_DAYS",
            registry=r,
        )
        # dkserver.store.backlog: a storm's connects share database trips.
        self.backlog_reads = Counter(
            "dkserver_backlog_reads",
            "Connects' first backlog reads",
            registry=r,
        )
        self.backlog_read_trips = Counter(
            "dkserver_backlog_read_trips",
            "Database transactions the first backlog reads took (gathered)",
            registry=r,
        )
        self.connections = Gauge(
            "dkserver_websocket_connections", "Open WebSocket connections", registry=r
        )
        self.online_users = Gauge(
            "dkserver_online_users",
            "Users with at least one open connection",
            registry=r,
        )
        # process_* (CPU, memory, fds, start time) and python_gc_* on the
        # server's own registry; both read /proc and gc.get_stats() at scrape
        # time and cost nothing in between.
        ProcessCollector(registry=r)
        GCCollector(registry=r)  # registers itself on CPython only
        self.commit_seconds = LatencyHistogram(
            "dkserver_commit_duration_seconds",
            "Group writer: from handing a batch to the database to its commit",
            COMMIT_BUCKETS,
        )
        r.register(self.commit_seconds)
        self.delivery_seconds = LatencyHistogram(
            "dkserver_delivery_latency_seconds",
            "From a message's arrival (stored) to its recipient proving it read it",
            DELIVERY_BUCKETS,
            ["kind"],
        )
        r.register(self.delivery_seconds)
        self.pending_messages = Gauge(
            "dkserver_pending_messages",
            "Direct messages stored and not yet delivered (proven read)",
            registry=r,
        )
        self.database_size = Gauge(
            "dkserver_database_size_bytes",
            "Database size: SQLite file plus WAL, or pg_database_size",
            registry=r,
        )
        self.rate_limits = RateLimitCollector()
        r.register(self.rate_limits)
        self.store_writable = Gauge(
            "dkserver_store_writable",
            "1 while the database takes writes; 0 from a write failing (disk"
            " full, read-only, locked, database unavailable) until one commits",
            registry=r,
        )
        self.store_writable.set(1)

        self.tls_expiry = Gauge(
            "dkserver_tls_certificate_expiry_timestamp_seconds",
            "When the served TLS certificate expires (Unix time)",
            registry=r,
        )
        self.tls_reloads = Counter(
            "dkserver_tls_certificate_reloads",
            "Certificate reloads (SIGHUP or a file change), by result",
            ["result"],
            registry=r,
        )
        for result in ("loaded", "refused"):
            self.tls_reloads.labels(result=result)

    def track_store(self, writable: Callable[[], bool]) -> None:
        """``dkserver_store_writable`` from the group writer's state."""
        self.store_writable.set_function(lambda: 1.0 if writable() else 0.0)

    def track_live(
        self, connections: Callable[[], int], users: Callable[[], int]
    ) -> None:
        """Read live gauges from the session registry at scrape time."""
        self.connections.set_function(connections)
        self.online_users.set_function(users)

    def track_rate_limits(self, registries: Mapping[str, Any]) -> None:
        """``name -> BucketRegistry`` (evictions, pruned, len) to report."""
        self.rate_limits.registries = dict(registries)

    def track_pending(self, count: Callable[[], float]) -> None:
        self.pending_messages.set_function(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
