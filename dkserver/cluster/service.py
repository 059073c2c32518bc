"""The cluster parts of a node, built in one place from the configuration.

Without ``--redis`` there are none: :func:`build_cluster` returns None and
the service runs the in-process :class:`~dkserver.ws.sessions.LocalBus`, as
a single process always did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService

from dkserver.cluster.bus import ClusterBus
from dkserver.cluster.forward import NodeForwards
from dkserver.cluster.nodes import NodeRegistry
from dkserver.cluster.redis import RedisService
from dkserver.config import Config
from dkserver.ws.sessions import LocalBus


class Cluster(MultiService):
    """Redis connections, node registry and bus of one node.

    Started with the root service; stopped by it after the WebSockets are
    closed (so the node's users go offline at once) and before the database.
    Other cluster parts (shared limits, analytics) take ``redis.commands``, a
    txredisapi connection (bulk replies stay strings: ``convertNumbers`` is
    off, integer replies are ints), and ``nodes.on_node_died``.
    """

    def __init__(self, config: Config, reactor: Any, prepare: Callable[[bytes], Any]):
        super().__init__()
        self.setName("cluster")
        self.node_id = config.node_id
        self.redis = RedisService(config.redis, reactor)
        local = LocalBus()
        self.nodes = NodeRegistry(
            self.redis, config.node_id, reactor, local.online_users
        )
        self.forwards = NodeForwards(
            config.node_id, self.redis, self.nodes, reactor, config.forward_timeout
        )
        self.bus = ClusterBus(
            config.node_id,
            self.redis,
            self.nodes,
            reactor,
            prepare,
            local=local,
            forwards=self.forwards,
        )
        self.redis.setServiceParent(self)
        self.nodes.setServiceParent(self)

    async def stop(self) -> None:
        """Leave the cluster (presence first), then close the connections."""
        self.running = 0
        left = self.nodes.stopService()
        if left is not None:
            await left
        await self.redis.stopService()


def build_cluster(
    config: Config, reactor: Any, prepare: Callable[[bytes], Any]
) -> Cluster | None:
    """The cluster parts when ``--redis`` is set, else None."""
    if config.redis is None:
        return None
    return Cluster(config, reactor, prepare)
