"""DeadNodeSessions: the node registry's hook that closes a dead node's
sessions (dkserver/cluster/analytics.py)."""

from __future__ import annotations

from twisted.logger import LogLevel, globalLogPublisher

from dkserver.cluster.analytics import DeadNodeSessions
from dkserver.store.errors import StoreError


class Analytics:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail = fail

    async def end_node_sessions(self, node_id: str, end_ns: int) -> int:
        self.calls.append((node_id, end_ns))
        if self.fail:
            raise StoreError("database error: gone")
        return 3


def test_a_dead_node_s_sessions_are_closed_at_the_declaration_time():
    analytics = Analytics()
    hook = DeadNodeSessions(analytics, "node-a", lambda: 1234)
    assert hook.node_died("node-b").result == 3
    assert analytics.calls == [("node-b", 1234)]


def test_this_node_never_closes_its_own_live_sessions():
    analytics = Analytics()
    hook = DeadNodeSessions(analytics, "node-a", lambda: 1234)
    assert hook.node_died("node-a").result == 0
    assert analytics.calls == []


def test_a_failure_is_logged_not_raised():
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        hook = DeadNodeSessions(Analytics(fail=True), "node-a", lambda: 1)
        assert hook.node_died("node-b").result == 0
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e for e in events if e.get("log_level") == LogLevel.critical]
    assert any(e.get("node_id") == "node-b" for e in failures)
