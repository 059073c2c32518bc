"""The limit parts of one service, chosen in one place: this process's own
(rate buckets, connection caps, login challenges in memory) or, with
``--redis``, the cluster's (the same rules held in Redis for every node).

The rest of dkserver sees only the seams: ``try_take``, ``reserve`` /
``release``, ``issue`` / ``consume``; a shared part answers through a
Deferred where a local one answers at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import IService

from dkserver.auth.challenges import ChallengeStore
from dkserver.config import Config
from dkserver.periodic import periodic_service
from dkserver.ratelimit import BucketRegistry, make_refill_service
from dkserver.ws.caps import ConnectionCounts


@dataclass
class LimitParts:
    challenges: Any
    login_ip: Any
    login_user: Any
    messages: Any
    #: REST writes (trackers, documents...) per user.
    writes: Any
    #: Unauthenticated REST reads (the user list, profiles...) per client IP.
    public_reads: Any
    caps: Any
    #: Timers and the like, for DkService's "timers" (stopped after the
    #: WebSockets are closed).
    services: list[IService] = field(default_factory=list)
    #: For the node registry's ``on_node_died`` (cluster only): frees the
    #: dead node's connection slots.
    node_died: Callable[[str], None] | None = None


def local_limits(config: Config, clock) -> LimitParts:
    challenges = ChallengeStore(clock, ttl=config.challenge_ttl)
    buckets = {
        name: BucketRegistry(rate, burst, clock)
        for name, rate, burst in (
            ("login_ip", config.login_rate, config.login_burst),
            ("login_user", config.login_rate, config.login_burst),
            ("messages", config.message_rate, config.message_burst),
            ("writes", config.write_rate, config.write_burst),
            ("public_reads", config.public_read_rate, config.public_read_burst),
        )
    }
    services = [make_refill_service(b, 5.0, clock) for b in buckets.values()]
    services.append(periodic_service("challenge-prune", 10.0, challenges.prune, clock))
    return LimitParts(challenges, caps=ConnectionCounts(), services=services, **buckets)


def build_limits(
    config: Config, clock, cluster: Any = None, *, redis: Any = None
) -> LimitParts:
    """This process's limits, or with ``config.redis`` the cluster's.

    ``cluster``: the node's cluster parts (dkserver.cluster.service.Cluster);
    the shared limits use its command connection and hook into its node
    registry.  ``redis``: a connection to use instead (tests); with neither,
    the limits open one of their own.
    """
    local = local_limits(config, clock)
    if config.redis is None:
        return local
    from dkserver.cluster.limits import shared_limits

    return shared_limits(local, config, clock, cluster=cluster, redis=redis)
