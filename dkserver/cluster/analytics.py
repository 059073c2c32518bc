"""Analytics across nodes: a dead node's sessions are closed by the survivors.

A node that is killed leaves its sessions open; restarting, it would close
them itself (``DkService._migrate``), but it may never restart.  The node
registry (dkserver.cluster.nodes) calls :meth:`DeadNodeSessions.node_died`
on every survivor when it declares a node dead.  Every survivor then runs the
same ``UPDATE … WHERE end_time IS NULL``: the first closes the sessions, the
others find nothing left to close, so no election is needed.  The end time
is the moment of the declaration (a few seconds after the death), so the
recorded durations are upper bounds, as for a crash closed at restart.

A node that was only frozen (``kill -STOP``) and comes back finds its
sessions closed; their later ``end_session`` is then a no-op, and the
durations stop at the declaration.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from dkserver.store.analytics import AnalyticsStore


class DeadNodeSessions:
    log = Logger()

    def __init__(
        self, analytics: AnalyticsStore, own_node_id: str, time_ns: Callable[[], int]
    ) -> None:
        self._analytics = analytics
        self._own = own_node_id
        self._time_ns = time_ns

    def node_died(self, node_id: str) -> Deferred:
        """Close ``node_id``'s open sessions; never fails (errors are logged).

        Fires with the number closed.  This node's own sessions are live
        whatever a registry thought while it was frozen: never closed here.
        """
        if node_id == self._own:
            return succeed(0)
        d = Deferred.fromCoroutine(self._close(node_id))
        d.addErrback(self._failed, node_id)
        return d

    async def _close(self, node_id: str) -> int:
        closed = await self._analytics.end_node_sessions(node_id, self._time_ns())
        if closed:
            self.log.info(
                "closed {count} sessions of dead node {node_id}",
                count=closed,
                node_id=node_id,
            )
        return closed

    def _failed(self, failure, node_id: str) -> int:
        self.log.failure(
            "cannot close the sessions of dead node {node_id}", failure, node_id=node_id
        )
        return 0
