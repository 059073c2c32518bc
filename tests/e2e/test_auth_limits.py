"""Stricter rules: login/registration rate limits and TLS versions."""

from __future__ import annotations

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.ssl import CertificateOptions, TLSVersion, optionsForClientTLS

from tests.support.client import Identity, post_json, register
from tests.support.server import start_server, stop_server

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends


@pytest_twisted.ensureDeferred
async def test_login_and_register_are_rate_limited_per_ip(backend_config):
    server = await start_server(backend_config(login_rate=0.01, login_burst=5))
    try:
        codes = []
        for i in range(8):
            code, body = await post_json(server, "/auth/login", {"user_id": f"u{i}"})
            codes.append(code)
        assert codes[:5] == [200] * 5
        assert codes[5:] == [429] * 3
        assert body == {"error": True, "message": body["message"]} and body["message"]
        assert await register(server, Identity("late")) == 429
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_login_is_rate_limited_per_user_id(backend_config):
    server = await start_server(backend_config(login_rate=0.01, login_burst=3))
    try:
        # Reset the per-IP limit by lifting it, so only the per-user one applies.
        server.service.login_ip_limits.rate = 1e9
        server.service.login_ip_limits.burst = 10**9
        server.service.login_ip_limits._buckets.clear()
        codes = [
            (await post_json(server, "/auth/login", {"user_id": "target"}))[0]
            for _ in range(5)
        ]
        assert codes == [200, 200, 200, 429, 429]
        code, _ = await post_json(server, "/auth/login", {"user_id": "other"})
        assert code == 200
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_tls_below_1_2_is_refused(server):
    class Options(CertificateOptions):
        def __init__(self):
            super().__init__(
                insecurelyLowerMinimumTo=TLSVersion.TLSv1_1,
                lowerMaximumSecurityTo=TLSVersion.TLSv1_1,
            )

        def getContext(self):
            ctx = super().getContext()
            ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
            return ctx

    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", server.https_port, Options())
    proto = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
    lost = []
    proto.connectionLost = lambda reason: lost.append(reason)
    proto.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    from twisted.internet.task import deferLater

    for _ in range(50):
        if lost:
            break
        await deferLater(reactor, 0.05, lambda: None)
    assert lost and lost[0].check(SSL.Error)

    # TLS 1.2 works.
    ok = optionsForClientTLS("localhost", trustRoot=server.trust)
    proto = await SSL4ClientEndpoint(
        reactor, "127.0.0.1", server.https_port, ok
    ).connect(protocol.Factory.forProtocol(protocol.Protocol))
    proto.transport.loseConnection()
