"""/healthz and /readyz against the real service, on both backends.

"Not writable" is made real: another connection holds a lock the heartbeat
commit needs (SQLite ``BEGIN EXCLUSIVE``; PostgreSQL ``LOCK TABLE``), as
another process or a stuck migration would.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager

import psycopg
import pytest
import pytest_twisted

from tests.support.client import get
from tests.support.server import start_server, stop_server
from tests.support.waiting import wait_for

pytestmark = pytest.mark.both_backends


@contextmanager
def database_locked(config):
    """Hold a write lock on the server's database from another connection."""
    if config.database.is_postgresql:
        conn = psycopg.connect(config.db_path, autocommit=False)
        try:
            conn.execute("LOCK TABLE server_settings IN ACCESS EXCLUSIVE MODE")
            yield
        finally:
            conn.rollback()
            conn.close()
    else:
        conn = sqlite3.connect(config.database.path, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()


@pytest_twisted.ensureDeferred
async def test_healthz_answers_without_a_token(backend_config):
    server = await start_server(backend_config())
    try:
        assert await get(server, "/healthz") == (200, {"status": "ok"})
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_readyz_commits_a_heartbeat_when_the_writer_was_idle(backend_config):
    server = await start_server(backend_config())
    service = server.service
    name = f"health_probe:{service.config.node_id}"
    try:
        assert await service.store.settings.get(name) is None
        assert await get(server, "/readyz") == (200, {"status": "ready"})
        first = await service.store.settings.get(name)
        assert first is not None
        # Within RECENT_COMMIT of that commit, a probe writes nothing more.
        commits = service.writer.batches
        for _ in range(5):
            assert (await get(server, "/readyz"))[0] == 200
        assert service.writer.batches == commits
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_readyz_is_503_naming_the_database_while_it_is_locked(backend_config):
    config = backend_config()
    server = await start_server(config)
    readiness = server.service.readiness
    readiness.recent = 0.0  # every probe commits: no waiting for the window
    readiness.probe_timeout = 0.5
    try:
        assert (await get(server, "/readyz"))[0] == 200
        with database_locked(config):
            status, body = await get(server, "/readyz")
            assert status == 503
            assert body["error"] is True
            assert body["message"].startswith("not ready: database: ")
            # The process itself still serves.
            assert (await get(server, "/healthz"))[0] == 200
        # Released: ready again without a restart.
        await wait_for(
            lambda: _status(server, "/readyz", 200), "ready after the lock", 40
        )
    finally:
        await stop_server(server)


async def _status(server, path: str, expected: int) -> bool:
    return (await get(server, path))[0] == expected


@pytest_twisted.ensureDeferred
async def test_readyz_is_503_while_shutting_down(backend_config):
    server = await start_server(backend_config())
    try:
        server.service.hub.closing = True
        status, body = await get(server, "/readyz")
        assert status == 503
        assert "server: shutting down" in body["message"]
        server.service.hub.closing = False
    finally:
        await stop_server(server)
