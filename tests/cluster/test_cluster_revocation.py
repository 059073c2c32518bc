"""Revocation across nodes (issue 12, item 4): ``dkserver token revoke`` and
``user ban``, run once against the shared PostgreSQL database, take effect
on every node of a real 3-node cluster: each node's revocation poll reads
the version row (DK_REVOCATION_POLL, 0.5 s) and closes its own connections
of the user.  The wait is a bound for a loaded machine; the test prints
what it measured.
"""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet.threads import deferToThread

from dkserver.auth.revocation import CLOSE_ACCOUNT_CLOSED, CLOSE_TOKEN_REVOKED
from tests.admin.admincli import dkserver
from tests.support.client import Identity, get, login, register_and_login
from tests.support.waiting import wait_for
from tests.support.ws import connect

BOUND = 10.0


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def refused_everywhere(cluster, token: str, status: int, what: str) -> float:
    start = time.monotonic()

    async def refused() -> bool:
        codes = [
            (await get(cluster[i], "/user/trackers", auth(token)))[0]
            for i in range(len(cluster))
        ]
        return all(code == status for code in codes)

    await wait_for(refused, what, BOUND, interval=0.05)
    return time.monotonic() - start


@pytest_twisted.ensureDeferred
async def test_token_revoke_reaches_every_node(cluster):
    user = Identity(cluster.user("rev"))
    token = await register_and_login(cluster[0], user)
    sockets = [await connect(cluster[i], token) for i in (1, 2)]
    for i in range(len(cluster)):
        assert (await get(cluster[i], "/user/trackers", auth(token)))[0] == 200
    result = await deferToThread(
        dkserver, "token", "revoke", user.user_id, "--db", cluster.pg_url
    )
    assert result.rc == 0, result
    took = await refused_everywhere(cluster, token, 401, "refused on every node")
    print(f"token revoke refused on all 3 nodes after {took:.2f} s")
    for ws in sockets:
        assert (await ws.wait_closed(timeout=BOUND))[0] == CLOSE_TOKEN_REVOKED
    # A token issued after the revocation, by another node, works everywhere.
    fresh = await login(cluster[2], user)
    for i in range(len(cluster)):
        assert (await get(cluster[i], "/user/trackers", auth(fresh)))[0] == 200


@pytest_twisted.ensureDeferred
async def test_ban_closes_connections_on_every_node(cluster):
    user = Identity(cluster.user("ban"))
    token = await register_and_login(cluster[1], user)
    sockets = [await connect(cluster[i], token) for i in range(len(cluster))]
    result = await deferToThread(
        dkserver, "user", "ban", user.user_id, "--db", cluster.pg_url
    )
    assert result.rc == 0, result
    for ws in sockets:
        assert await ws.wait_closed(timeout=BOUND) == (
            CLOSE_ACCOUNT_CLOSED,
            "account banned",
        )
    await refused_everywhere(cluster, token, 403, "banned on every node")
