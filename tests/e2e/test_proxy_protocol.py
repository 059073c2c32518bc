"""DK_PROXY_PROTOCOL: the client address comes from the balancer's header.

Real loopback connections that write a PROXY header (v1 or v2) and then do
TLS, as HAProxy's ``send-proxy``/``send-proxy-v2`` does, against the real
service; the per-IP limits and the log lines must name the header's address.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.logger import capturedLogs, formatEvent

from tests.support import ws
from tests.support.client import Identity, get, post_json, register_and_login
from tests.support.proxied import Via, v1_header, v2_header, v2_local_header
from tests.support.server import make_config, start_server, stop_server

HEADERS = {"v1": v1_header, "v2": v2_header}


def _lines(events) -> list[str]:
    return [formatEvent(e) for e in events]


def _failures(events) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_failure") is not None]


@pytest_twisted.async_yield_fixture
async def proxied_server(tmp_path):
    running = await start_server(
        make_config(tmp_path, proxy_protocol=True, login_rate=0.001, login_burst=3)
    )
    yield running
    await stop_server(running)


async def _login_codes(via: Via, count: int, prefix: str) -> list[int]:
    return [
        (await post_json(via, "/auth/login", {"user_id": f"{prefix}{i}"}))[0]
        for i in range(count)
    ]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("client", "neighbour"),
    [("203.0.113.7", "203.0.113.8"), ("2001:db8::7", "2001:db8::8")],
)
@pytest_twisted.ensureDeferred
async def test_login_ip_limit_keys_on_the_header_address(
    proxied_server, version, client, neighbour
):
    header = HEADERS[version]
    via = Via(proxied_server, header=header(client, 40000))
    other = Via(proxied_server, header=header(neighbour, 40001))
    try:
        with capturedLogs() as events:
            assert await _login_codes(via, 4, "a") == [200, 200, 200, 429]
            # Every connection comes from 127.0.0.1; the neighbour is not limited.
            assert await _login_codes(other, 1, "b") == [200]
        line = f"security event rate_limited from {client} for user None"
        assert line in _lines(events)
        limits = proxied_server.service.login_ip_limits
        assert client in limits and "127.0.0.1" not in limits
    finally:
        await via.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_v1_and_v2_name_one_ipv6_client_alike(proxied_server):
    """Twisted's v2 parser spells out every group; one client is one key."""
    v1 = Via(proxied_server, header=v1_header("2001:db8::7", 40000))
    v2 = Via(proxied_server, header=v2_header("2001:db8::7", 40001))
    try:
        assert await _login_codes(v1, 2, "a") == [200, 200]
        assert await _login_codes(v2, 2, "b") == [200, 429]
    finally:
        await v1.close()
        await v2.close()


@pytest.mark.parametrize(
    "first_bytes",
    [
        None,  # TLS straight away: a balancer without send-proxy
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 notaport 443\r\n",
        b"PROXY TCP4 not-an-address 127.0.0.1 40000 443\r\n",
        b"PROXY TCP6 zz::zz::1 ::1 40000 443\r\n",
    ],
    ids=["tls", "plain-http", "bad-port", "bad-v4-address", "bad-v6-address"],
)
@pytest_twisted.ensureDeferred
async def test_connection_without_a_valid_header_is_dropped(
    proxied_server, first_bytes
):
    via = Via(proxied_server, header=first_bytes)
    try:
        with capturedLogs() as events:
            # treq's error for a connection closed before any response
            with pytest.raises(Exception):
                await post_json(via, "/auth/login", {"user_id": "u"})
        assert (
            "dropped a connection from 127.0.0.1: no valid PROXY protocol header"
            in _lines(events)
        ), _lines(events)
        assert not _failures(events)
        # Nothing reached the app, under either address.
        assert len(proxied_server.service.login_ip_limits) == 0
    finally:
        await via.close()


@pytest_twisted.ensureDeferred
async def test_metrics_loopback_exemption_uses_the_header_address(proxied_server):
    """Behind a local balancer every client would otherwise look like loopback.

    v2 LOCAL (the balancer's own health checks) keeps the real peer.
    """
    local = Via(proxied_server, header=v2_local_header())
    remote = Via(proxied_server, header=v2_header("198.51.100.4", 40000))
    try:
        assert (await get(local, "/metrics"))[0] == 200
        assert (await get(remote, "/metrics"))[0] == 401
    finally:
        await local.close()
        await remote.close()


@pytest_twisted.ensureDeferred
async def test_websocket_upgrade_sees_the_header_address(tmp_path):
    server = await start_server(
        make_config(tmp_path, proxy_protocol=True, max_connections_per_ip=1)
    )
    first = Via(server, header=v2_header("192.0.2.10", 40000))
    again = Via(server, header=v1_header("192.0.2.10", 40001))
    other = Via(server, header=v2_header("2001:db8::10", 40002))
    clients = []
    try:
        alice = await register_and_login(first, Identity("alice"))
        bob = await register_and_login(other, Identity("bob"))
        with capturedLogs() as events:
            clients.append(await ws.connect(first, alice))
            with pytest.raises(ws.HandshakeRefused) as refused:
                await ws.connect(again, alice)
            clients.append(await ws.connect(other, bob))
        assert refused.value.status_code == 429
        lines = _lines(events)
        assert "user alice connected from 192.0.2.10" in lines
        assert "user bob connected from 2001:db8::10" in lines
        assert (
            "security event refused_upgrade (connection limit) for alice"
            " from 192.0.2.10" in lines
        )
    finally:
        for client in clients:
            client.abort()
        for via in (first, again, other):
            await via.close()
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_refusing_an_oversized_body_works_through_the_header_layer(
    proxied_server,
):
    """The 413 path pauses, closes and then aborts the transport: each call
    must pass through the PROXY layer to the socket."""
    via = Via(proxied_server, header=v2_header("203.0.113.9", 40000))
    try:
        code, body = await post_json(via, "/auth/register", b"x" * (1024 * 1024 + 1))
        assert code == 413
        assert body == {"error": True, "message": "Request body too large"}
        code, _ = await post_json(via, "/auth/login", {"user_id": "after413"})
        assert code == 200
        assert "203.0.113.9" in proxied_server.service.login_ip_limits
    finally:
        await via.close()
