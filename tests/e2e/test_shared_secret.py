"""Nodes of one PostgreSQL database need no shared secret setting: with
neither ``JWT_SECRET`` nor ``DK_JWT_SECRET_FILE`` the JWT secret lives in the
database (``server_settings``), so a token one node issues verifies on
another; an explicit setting still wins."""

from __future__ import annotations

import jwt
import psycopg
import pytest_twisted

from dkserver.cluster.secret import SETTING
from tests.reliability.daemon import Daemon
from tests.support.client import Identity, get, register_and_login
from tests.support.server import make_config, start_server, stop_server


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def settings_rows(pg_url: str) -> list[tuple]:
    with psycopg.connect(pg_url) as conn:
        return conn.execute("SELECT name, value FROM server_settings").fetchall()


def node(tmp_path, name: str, pg_url: str) -> Daemon:
    """A twistd dkserver on ``pg_url`` with no secret setting at all."""
    directory = tmp_path / name
    directory.mkdir()
    daemon = Daemon(
        directory, db=pg_url, DK_NODE_ID=name, XDG_CACHE_HOME=str(directory / "cache")
    )
    daemon.env.pop("DK_JWT_SECRET_FILE", None)  # Daemon's default on PostgreSQL
    return daemon


@pytest_twisted.ensureDeferred
async def test_two_nodes_without_a_secret_setting_accept_each_other_s_tokens(
    tmp_path, pg_url
):
    a, b = node(tmp_path, "node-a", pg_url), node(tmp_path, "node-b", pg_url)
    try:
        on_a = await a.start()
        on_b = await b.start()
        alice_token = await register_and_login(on_a, Identity("alice"))
        bob_token = await register_and_login(on_b, Identity("bob"))
        for server, token in ((on_b, alice_token), (on_a, bob_token)):
            code, body = await get(server, "/user/trackers", auth(token))
            assert (code, body) == (200, []), body
        # one secret, stored once, in the form the secret file holds it
        [(name, value)] = settings_rows(pg_url)
        assert name == SETTING and len(bytes.fromhex(value)) == 32
        assert jwt.decode(alice_token, bytes.fromhex(value), algorithms=["HS256"])

        # A restarted node reads the same secret back: tokens outlive it.
        await a.stop()
        on_a = await a.start()
        code, _ = await get(on_a, "/user/trackers", auth(bob_token))
        assert code == 200

        # Each node's client build went to its cache directory, not its cwd.
        for daemon, server in ((a, on_a), (b, on_b)):
            response = await server.http.get(server.url("/download/linux"))
            assert response.code == 200
            await response.content()
            assert (daemon.dir / "cache" / "dkserver" / "dk.pyz").is_file()
            assert not (daemon.dir / "dk.pyz").exists()
            assert not list(daemon.dir.glob("*jwt-secret*"))
    finally:
        for daemon in (a, b):
            await daemon.stop()
            daemon.kill_now()


@pytest_twisted.ensureDeferred
async def test_an_explicit_jwt_secret_wins_over_the_database(tmp_path, pg_url):
    secret = "s" * 32
    server = await start_server(
        make_config(tmp_path, db=pg_url, jwt_secret=secret, jwt_secret_path="")
    )
    try:
        token = await register_and_login(server, Identity("alice"))
    finally:
        await stop_server(server)
    assert jwt.decode(token, secret.encode(), algorithms=["HS256"])
    assert settings_rows(pg_url) == []


@pytest_twisted.ensureDeferred
async def test_a_secret_file_on_postgresql_keeps_holding_the_secret(tmp_path, pg_url):
    config = make_config(tmp_path, db=pg_url)  # DK_JWT_SECRET_FILE in tmp_path
    server = await start_server(config)
    try:
        token = await register_and_login(server, Identity("alice"))
    finally:
        await stop_server(server)
    with open(config.jwt_secret_path) as f:
        secret = bytes.fromhex(f.read().strip())
    assert jwt.decode(token, secret, algorithms=["HS256"])
    assert settings_rows(pg_url) == []


@pytest_twisted.ensureDeferred
async def test_an_in_process_server_without_a_secret_file_uses_the_database(
    tmp_path, pg_url
):
    config = make_config(tmp_path, db=pg_url, jwt_secret_path="")
    assert config.secret_in_database
    server = await start_server(config)
    try:
        token = await register_and_login(server, Identity("alice"))
        code, _ = await get(server, "/user/trackers", auth(token))
        assert code == 200
    finally:
        await stop_server(server)
    [(_, value)] = settings_rows(pg_url)
    assert jwt.decode(token, bytes.fromhex(value), algorithms=["HS256"])
    assert not list(tmp_path.glob("*jwt-secret*"))
