"""Analytics across nodes: sessions carry the node id, a restarting node
closes only its own left-open sessions, /stats and /metrics name the node
(issue 11, item 5).  One real node in-process on a shared PostgreSQL,
beside rows other nodes "left": what matters is which rows it touches."""

from __future__ import annotations

import psycopg
import pytest_twisted

from dkserver.cluster.url import parse_redis_url
from tests.e2e.test_analytics import eventually
from tests.support.client import Identity, get, register_and_login
from tests.support.metrics import sample, scrape
from tests.support.server import make_config, start_server, stop_server
from tests.support.ws import connect

LONG_AGO = "2026-11-01 00:00:00.000000000+00:00"


def rows(pg_url: str, query: str) -> list[tuple]:
    with psycopg.connect(pg_url) as conn:
        return conn.execute(query).fetchall()


def left_open(pg_url: str, *sessions: tuple[str, str | None]) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "INSERT INTO users (user_id, username, public_key, registered_ns)"
            " VALUES ('ghost', 'ghost', 'k', 0)"
        )
        for session_id, node_id in sessions:
            conn.execute(
                "INSERT INTO sessions (session_id, user_id, start_time, node_id)"
                " VALUES (%s, 'ghost', %s, %s)",
                (session_id, LONG_AGO, node_id),
            )


def open_sessions(pg_url: str) -> dict[str, str | None]:
    return dict(
        rows(pg_url, "SELECT session_id, node_id FROM sessions WHERE end_time IS NULL")
    )


@pytest_twisted.ensureDeferred
async def test_a_cluster_node_closes_only_its_own_sessions_and_names_itself(
    tmp_path, pg_url, redis_url
):
    left_open(pg_url, ("mine", "node-a"), ("theirs", "node-b"), ("legacy", None))
    config = make_config(
        tmp_path,
        db=pg_url,
        redis=parse_redis_url(redis_url),
        node_id="node-a",
        admin_users=frozenset({"root"}),
    )
    server = await start_server(config)
    try:
        # started: its own and the pre-version-6 row closed, node-b's kept
        assert open_sessions(pg_url) == {"theirs": "node-b"}

        token = await register_and_login(server, Identity("root"))
        ws = await connect(server, token)
        assert await eventually(lambda: len(open_sessions(pg_url)) == 2)
        assert sorted(open_sessions(pg_url).values()) == ["node-a", "node-b"]

        code, body = await get(server, "/stats", {"Authorization": f"Bearer {token}"})
        assert code == 200, body
        assert body["node"] == "node-a"
        assert body["live"]["connections"] == 1
        assert body["sessions"]["open"] == 2  # the cluster's, from the database

        text = await scrape(server)
        assert sample(text, "dkserver_node_info", node_id="node-a") == 1.0
        ws.close()
        await ws.wait_closed()
    finally:
        await stop_server(server)
    # stopped: node-b's session is still node-b's to close
    assert open_sessions(pg_url) == {"theirs": "node-b"}


@pytest_twisted.ensureDeferred
async def test_survivors_close_a_dead_node_s_sessions(tmp_path, pg_url, redis_url):
    left_open(pg_url, ("dead-1", "node-b"), ("dead-2", "node-b"), ("c", "node-c"))
    config = make_config(
        tmp_path, db=pg_url, redis=parse_redis_url(redis_url), node_id="node-a"
    )
    server = await start_server(config)
    try:
        hook = server.service.dead_node_sessions
        assert await hook.node_died("node-b") == 2
        assert await hook.node_died("node-b") == 0  # another survivor, later
        assert open_sessions(pg_url) == {"c": "node-c"}
    finally:
        await stop_server(server)
