"""Two dkserver processes behind a real HAProxy (mode tcp, PROXY protocol).

HAProxy connects to the nodes from 127.0.0.1; the clients connect to HAProxy
from 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 on ``lo``).  With
``DK_PROXY_PROTOCOL=1`` the nodes must key their per-IP login limit on, and
log, the client's address: exhausting it from 127.0.0.2 leaves 127.0.0.3
free to log in.  The nodes share a PostgreSQL database and a JWT secret file,
as docs/deployment.md has it.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from dkserver.auth.secret import load_or_create_secret
from dkserver.tls import generate_self_signed
from tests.reliability.daemon import Daemon
from tests.support import haproxy as _haproxy
from tests.support import ws
from tests.support.client import Identity, post_json, register_and_login
from tests.support.proxied import Via, v2_local_header

LOGIN_BURST = 3


@pytest.fixture(scope="module")
def haproxy_binary() -> str:
    binary = _haproxy.find_haproxy()
    if binary is None:
        reason = "haproxy is not installed (apt-get install haproxy)"
        if os.environ.get(_haproxy.ENV_REQUIRE):  # CI: a skip would hide the gap
            pytest.fail(f"{_haproxy.ENV_REQUIRE} is set and {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


class ProxiedNode(Daemon):
    """A ``twistd dkserver`` node that expects PROXY headers, on PostgreSQL."""

    def __init__(self, directory, db_url: str, shared) -> None:
        super().__init__(
            directory,
            DK_PROXY_PROTOCOL="1",
            DK_JWT_SECRET_FILE=str(shared / "jwt-secret"),
            LOGIN_RATE_LIMIT="0.001",
            LOGIN_BURST_LIMIT=str(LOGIN_BURST),
        )
        self.db = db_url
        # One certificate for the service, whichever node answers.
        self.cert, self.key = shared / "server.pem", shared / "server.key"

    @staticmethod
    async def _serves(handle) -> bool:
        """Probe as the balancer's own check would: a v2 LOCAL header."""
        via = Via(handle, header=v2_local_header())
        try:
            return await Daemon._serves(via)
        finally:
            await via.close()


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
@pytest_twisted.ensureDeferred
async def test_client_ip_reaches_limits_and_logs_through_haproxy(
    tmp_path, pg_url, haproxy_binary, send_proxy
):
    shared = tmp_path / "shared"
    shared.mkdir()
    load_or_create_secret(None, str(shared / "jwt-secret"))
    generate_self_signed(str(shared / "server.pem"), str(shared / "server.key"))
    nodes = [ProxiedNode(tmp_path / f"node{i}", pg_url, shared) for i in (0, 1)]
    for node in nodes:
        node.dir.mkdir()
    balancer = _haproxy.HAProxy(
        haproxy_binary, tmp_path / "haproxy", [n.port for n in nodes], send_proxy
    )
    clients: list[Via] = []
    sockets = []
    try:
        handles = [await node.start() for node in nodes]
        await balancer.start()

        def via(source: str, persistent: bool) -> Via:
            client = Via(
                handles[0], port=balancer.port, source=source, persistent=persistent
            )
            clients.append(client)
            return client

        # A new connection per request: round robin alternates the nodes, and
        # each keeps its own buckets, so both run out after LOGIN_BURST each.
        flooder = via("127.0.0.2", persistent=False)
        codes = [
            (await post_json(flooder, "/auth/login", {"user_id": f"f{i}"}))[0]
            for i in range(2 * LOGIN_BURST + 2)
        ]
        assert codes == [200] * (2 * LOGIN_BURST) + [429, 429], codes

        # One connection, so one node: the challenge is kept where it was issued.
        neighbour = via("127.0.0.3", persistent=True)
        token = await register_and_login(neighbour, Identity("carol"))
        sockets.append(await ws.connect(via("127.0.0.3", persistent=True), token))

        logs = [node.log_text() for node in nodes]
        for log in logs:
            assert "security event rate_limited from 127.0.0.2 for user None" in log
            assert "rate_limited from 127.0.0.1" not in log
        assert sum("user carol connected from 127.0.0.3" in log for log in logs) == 1
        # The health checks (v2 LOCAL, or v1 from the balancer) were not dropped.
        assert not any("no valid PROXY protocol header" in log for log in logs)
        assert balancer.proc.poll() is None
    finally:
        for sock in sockets:
            sock.abort()
        for client in clients:
            await client.close()
        balancer.stop()
        for node in nodes:
            await node.stop()
