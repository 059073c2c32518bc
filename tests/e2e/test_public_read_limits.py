"""The per-IP limit of the reads anyone may make (issue 12, item 9), end to
end over real TLS: past the burst 429 with the JSON error and Retry-After,
and after Retry-After seconds the same client is served again."""

from __future__ import annotations

import json

import pytest_twisted

from tests.support.client import Identity, register_and_login
from tests.support.server import make_config, start_server, stop_server
from tests.support.waiting import sleep

#: Every route the limit covers (one bucket per client IP for all of them).
PUBLIC_READS = (
    "/active-users",
    "/auth/users/alice",
    "/auth/check-userid/nobody",
    "/user/descriptions/alice",
    "/trackers",
    "/apis",
    "/stats",
)


async def fetch(server, path: str, headers=None):
    response = await server.http.get(server.url(path), headers=headers or {})
    raw = await response.content()
    return response.code, response.headers, raw


@pytest_twisted.ensureDeferred
async def test_public_reads_get_429_with_retry_after_then_recover(tmp_path):
    server = await start_server(
        make_config(
            tmp_path,
            public_read_rate=0.25,
            public_read_burst=len(PUBLIC_READS),
            admin_users=frozenset({"alice"}),
        )
    )
    try:
        token = await register_and_login(server, Identity("alice"))
        admin = {"Authorization": [f"Bearer {token}".encode()]}
        # The burst: one request to each route, all served.
        for path in PUBLIC_READS:
            code, _, raw = await fetch(server, path, admin)
            assert code == 200, (path, raw)
        # Then each of them is refused, before anything else is looked at.
        for path in (*PUBLIC_READS, "/auth/users/random-id-123"):
            code, headers, raw = await fetch(server, path, admin)
            assert code == 429, (path, raw)
            assert headers.getRawHeaders(b"content-type") == [b"application/json"]
            body = json.loads(raw)
            assert body["error"] is True and body["message"], body
            (retry_after,) = headers.getRawHeaders(b"retry-after")
            assert 1 <= int(retry_after) <= 4, retry_after  # one token at 0.25/s
        # A token comes back after Retry-After seconds: served again.
        await sleep(int(retry_after))
        code, _, raw = await fetch(server, "/active-users")
        assert code == 200, raw
        assert json.loads(raw) == {"online": [], "offline": ["alice"]}
        assert (await fetch(server, "/active-users"))[0] == 429
        # Logins and authenticated routes have limits of their own.
        assert (await fetch(server, "/user/trackers", admin))[0] == 200
        metrics = (await fetch(server, "/metrics"))[2].decode()
        assert (
            'dkserver_rate_limited_requests_total{limit="public_read"} 9.0' in metrics
        ), metrics
    finally:
        await stop_server(server)
