"""Prometheus metrics, one registry per server instance.

A registry of its own (rather than prometheus_client's global one) lets tests
and the ``.tac`` build several services in one process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dkserver import __version__

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


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
        self.connections = Gauge(
            "dkserver_websocket_connections", "Open WebSocket connections", registry=r
        )
        self.online_users = Gauge(
            "dkserver_online_users",
            "Users with at least one open connection",
            registry=r,
        )

    def track_live(
        self, connections: Callable[[], int], users: Callable[[], int]
    ) -> None:
        """Read live gauges from the session registry at scrape time."""
        self.connections.set_function(connections)
        self.online_users.set_function(users)

    def render(self) -> bytes:
        return generate_latest(self.registry)
