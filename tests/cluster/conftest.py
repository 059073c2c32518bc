"""One 3-node cluster for the cluster tests: real ``twistd dkserver`` processes
on one private PostgreSQL database and one private Redis.

Starting three nodes costs seconds, so a module's tests share them; each
test gets its users from :meth:`Cluster.user` (unique names), and a test
that kills, freezes or restarts something has ``cluster.restore()`` bring
every node (and Redis) back before the next test.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.support import redis as _redis
from tests.support.cluster import Cluster


@pytest.fixture(scope="session")
def cluster_redis():
    try:
        server = _redis.open_server()
    except _redis.RedisUnavailable as e:
        if os.environ.get(_redis.ENV_REQUIRE):
            pytest.fail(f"{_redis.ENV_REQUIRE} is set and Redis unavailable: {e}")
        pytest.skip(f"Redis unavailable: {e}")
    yield server
    server.close()


@pytest.fixture(scope="session")
def cluster_db(pg_server):
    name = pg_server.create_database(migrated=True)
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory, cluster_db, cluster_redis):
    # pytest-twisted has no session-scoped async fixtures: block on the
    # reactor instead (it runs the cluster's start and stop).
    nodes = Cluster(
        tmp_path_factory.mktemp("cluster"), cluster_db, cluster_redis.url, size=3
    )
    nodes.redis_server = cluster_redis
    try:
        pytest_twisted.blockon(Deferred.fromCoroutine(nodes.start()))
        yield nodes
    finally:
        pytest_twisted.blockon(Deferred.fromCoroutine(nodes.stop()))


@pytest_twisted.async_yield_fixture
async def cluster(shared_cluster, request):
    try:
        yield shared_cluster
    finally:
        if (
            request.node.rep_call_failed
            if hasattr(request.node, "rep_call_failed")
            else False
        ):
            print(shared_cluster.logs())
        await shared_cluster.restore()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call_failed = report.failed
    return report
