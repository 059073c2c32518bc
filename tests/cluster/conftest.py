"""A 3-node cluster per test: real ``twistd dkserver`` processes on one
private PostgreSQL database and one private Redis."""

from __future__ import annotations

import pytest_twisted

from tests.support.cluster import Cluster


@pytest_twisted.async_yield_fixture
async def cluster(tmp_path, pg_url, redis_url):
    nodes = Cluster(tmp_path / "cluster", pg_url, redis_url, size=3)
    try:
        await nodes.start()
        yield nodes
    except BaseException:
        print(nodes.logs())
        raise
    finally:
        await nodes.stop()
