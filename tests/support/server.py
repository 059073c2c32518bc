"""Start the real service on ephemeral loopback ports for end-to-end tests."""

from __future__ import annotations

import dataclasses
import os

import treq
from treq.client import HTTPClient
from twisted.internet import reactor, ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from dkserver.config import Config
from dkserver.service import DkService


def make_config(tmp_path, db: str | None = None, **overrides) -> Config:
    """A test configuration; ``db`` is a SQLite path or a PostgreSQL URL
    (default: ``dk.db`` in ``tmp_path``)."""
    db = str(tmp_path / "dk.db") if db is None else db
    base = Config(
        https="127.0.0.1:0",
        http="127.0.0.1:0",
        db_path=db,
        # beside the SQLite file as the server would put it; in tmp_path for a URL
        jwt_secret_path=(
            str(tmp_path / "jwt-secret") if "://" in db else db + ".jwt-secret"
        ),
        cert_path=str(tmp_path / "certs" / "server.pem"),
        key_path=str(tmp_path / "certs" / "server.key"),
        login_rate=10_000.0,
        login_burst=10_000,
        # Tests poll /active-users and friends; tests of the limit lower it.
        public_read_rate=10_000.0,
        public_read_burst=10_000,
        shutdown_grace=2.0,
    )
    # re-derive the parsed ``database`` should an override name another db_path
    return dataclasses.replace(base, **{"database": None, **overrides})


def trusting_client(trust: ssl.Certificate, pool=None) -> HTTPClient:
    """A treq client that trusts exactly ``trust`` (the server's dev cert)."""
    return HTTPClient(
        Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust),
            pool=pool,
        )
    )


class RunningServer:
    """A started DkService plus HTTPS clients that trust its certificate."""

    def __init__(self, service: DkService) -> None:
        self.service = service
        self.config = service.config
        with open(self.config.cert_path, "rb") as f:
            self.cert_pem = f.read()
        self.trust = ssl.Certificate.loadPEM(self.cert_pem)
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = trusting_client(self.trust, self.pool)

    @property
    def https_port(self) -> int:
        return self.service.https.bound_port()

    @property
    def http_port(self) -> int:
        return self.service.http.bound_port()

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def url(self, path: str) -> str:
        return self.base + path

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


async def start_server(config: Config) -> RunningServer:
    os.makedirs(os.path.dirname(config.cert_path), exist_ok=True)
    service = DkService(config, reactor)
    service.startService()
    await service.ready()
    return RunningServer(service)


async def stop_server(server: RunningServer) -> None:
    await server.close()
    if server.service.running:
        await server.service.stopService()


__all__ = ["RunningServer", "make_config", "start_server", "stop_server", "treq"]
