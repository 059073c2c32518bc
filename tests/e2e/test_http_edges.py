"""Bad input over real TLS: limits, slow clients, redirects."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

from tests.support.client import Identity, get, post_json, register


class RawClient(protocol.Protocol):
    """Collects everything the server sends until it closes."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.data)


async def raw_tls(server) -> RawClient:
    options = optionsForClientTLS("localhost", trustRoot=server.trust)
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", server.https_port, options)
    return await endpoint.connect(protocol.Factory.forProtocol(RawClient))


@pytest_twisted.ensureDeferred
async def test_body_over_one_mib_is_refused_with_413(server):
    code, body = await post_json(server, "/auth/register", b"x" * (1024 * 1024 + 1))
    assert code == 413
    assert body == {"error": True, "message": "Request body too large"}
    # The server keeps serving.
    assert await register(server, Identity("after413")) == 201


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_limit_is_refused(server):
    client = await raw_tls(server)
    client.transport.write(
        b"POST /auth/register HTTP/1.1\r\nHost: localhost\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"a" * 65536
    for _ in range(20):
        client.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    data = await client.closed
    assert data.startswith(b"HTTP/1.1 413")


@pytest_twisted.ensureDeferred
async def test_half_sent_request_is_closed_and_others_served(tmp_path):
    from tests.support.server import make_config, start_server, stop_server

    server = await start_server(make_config(tmp_path, http_timeout=0.5))
    try:
        client = await raw_tls(server)
        client.transport.write(
            b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        # Meanwhile another client is served normally.
        assert (await get(server, "/auth/check-userid/x"))[0] == 200
        data = await client.closed
        assert b"500" not in data
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_trickled_headers_hit_the_request_deadline(tmp_path):
    from tests.support.server import make_config, start_server, stop_server

    server = await start_server(make_config(tmp_path, http_timeout=0.4))
    try:
        client = await raw_tls(server)
        client.transport.write(b"GET /auth/check-userid/x HTTP/1.1\r\n")

        def trickle():
            if client.transport.connected:
                client.transport.write(b"X-Slow: 1\r\n")

        from twisted.internet.task import LoopingCall

        loop = LoopingCall(trickle)
        loop.start(0.1)
        try:
            data = await client.closed
        finally:
            loop.stop()
        assert data.startswith(b"HTTP/1.1 408")
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_wrong_types_never_cause_500(server):
    bodies = [
        {"user_id": None},
        {"user_id": ["a"]},
        {"user_id": {"a": 1}},
        {"user_id": 1e309},
        b"\xff\xfe",
        b"",
        b"null",
        b"1" * 5000,
    ]
    for path in ("/auth/login", "/auth/login?verify=true", "/auth/register"):
        for body in bodies:
            code, answer = await post_json(server, path, body)
            assert code == 400, (path, body, code, answer)
            assert answer["error"] is True


@pytest_twisted.ensureDeferred
async def test_http_port_redirects_with_308(server):
    import treq

    for path in ("/", "/auth/login?verify=true", "/ws?token=abc"):
        response = await treq.get(
            f"http://127.0.0.1:{server.http_port}{path}",
            allow_redirects=False,
            headers={"Host": "example.test"},
        )
        await response.content()
        assert response.code == 308
        location = response.headers.getRawHeaders(b"location")[0].decode()
        assert location == f"https://example.test:{server.https_port}{path}"


@pytest_twisted.ensureDeferred
async def test_redirect_drops_port_443_and_http_port(tmp_path):
    from twisted.web.test.requesthelper import DummyRequest

    from dkserver.web.redirect import RedirectResource

    resource = RedirectResource(lambda: 443)
    request = DummyRequest([b""])
    request.uri = b"/x?y=1"
    request.requestHeaders.setRawHeaders(b"host", [b"dk.example.org:80"])
    resource.render(request)
    assert request.responseCode == 308
    assert request.responseHeaders.getRawHeaders(b"location") == [
        b"https://dk.example.org/x?y=1"
    ]


@pytest_twisted.ensureDeferred
async def test_plain_http_on_the_tls_port_does_not_crash(server):
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.https_port)
    client = await endpoint.connect(protocol.Factory.forProtocol(RawClient))
    client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await client.closed
    code, body = await get(server, "/auth/check-userid/x")
    assert code == 200 and json.dumps(body)
