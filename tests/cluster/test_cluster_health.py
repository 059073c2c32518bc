"""/readyz of a cluster node names Redis while Redis is down, and is ready
again once it is back (real nodes, real Redis stopped and restarted)."""

from __future__ import annotations

import pytest_twisted

from tests.support.client import get
from tests.support.waiting import wait_for


@pytest_twisted.ensureDeferred
async def test_readyz_names_redis_while_it_is_down(cluster):
    node = cluster[0]
    assert await get(node, "/readyz") == (200, {"status": "ready"})
    cluster.redis_server.stop()
    try:

        async def redis_named():
            status, body = await get(node, "/readyz")
            return status == 503 and "redis: " in body["message"] and body

        body = await wait_for(redis_named, "/readyz naming redis", 30)
        assert body["error"] is True
        assert body["message"].startswith("not ready: ")
        # Only Redis: the database still takes commits.
        assert "database" not in body["message"], body
        assert (await get(node, "/healthz"))[0] == 200
    finally:
        cluster.redis_server.start()

    async def ready():
        return (await get(node, "/readyz"))[0] == 200

    await wait_for(ready, "/readyz ready after Redis is back", 30)
