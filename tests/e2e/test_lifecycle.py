"""Start, stop, restart: twistd, the .tac file, persisted state, old databases."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.support.client import Identity, get, login, register
from tests.support.server import make_config, start_server, stop_server, trusting_client

ROOT = Path(__file__).resolve().parents[2]
from tests.support.paths import FIXTURES  # noqa: E402

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_restart_keeps_users_and_tokens(backend_config):
    config = backend_config()
    server = await start_server(config)
    alice = Identity("alice")
    assert await register(server, alice) == 201
    token = await login(server, alice)
    await stop_server(server)
    assert oct(os.stat(config.jwt_secret_path).st_mode & 0o777) == "0o600"

    server = await start_server(config)
    try:
        assert await get(server, "/auth/check-userid/alice") == (200, {"exists": True})
        # The generated secret was kept, so the old token is still valid.
        assert await server.service.auth.authenticate(token) == "alice"
        assert await login(server, alice)
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_shutdown_lets_in_flight_requests_finish(backend_config):
    server = await start_server(backend_config())
    store = server.service.store
    original = store.users.exists
    entered: Deferred = Deferred()

    async def slow_exists(user_id):
        entered.callback(None)
        await deferLater(reactor, 0.3, lambda: None)
        return await original(user_id)

    store.users.exists = slow_exists
    request = Deferred.fromCoroutine(get(server, "/auth/check-userid/x"))
    # Stop once the request is in the handler (not after a fixed sleep: on
    # a loaded machine the request could arrive after the store had closed,
    # and its database call would then wait forever).
    await entered
    await server.service.stopService()
    assert (await request) == (200, {"exists": False})
    await server.close()


@pytest_twisted.ensureDeferred
async def test_shutdown_lets_an_in_flight_login_finish(backend_config):
    # The login steps skip the router; shutdown still waits for them.
    server = await start_server(backend_config())
    ivy = Identity("ivy")
    assert await register(server, ivy) == 201
    users = server.service.store.users
    original = users.get
    entered: Deferred = Deferred()

    async def slow_get(user_id):
        entered.callback(None)
        await deferLater(reactor, 0.3, lambda: None)
        return await original(user_id)

    users.get = slow_get
    token = Deferred.fromCoroutine(login(server, ivy))
    await entered
    await server.service.stopService()
    assert (await token).count(".") == 2
    await server.close()


@pytest.mark.sqlite_only(reason="upgrading the original's SQLite file in place")
@pytest_twisted.ensureDeferred
async def test_original_server_database_is_upgraded_and_users_log_in(tmp_path):
    for name in os.listdir(FIXTURES):
        if name.startswith("original-server.db"):
            shutil.copy(
                FIXTURES / name, tmp_path / name.replace("original-server", "dk")
            )
    seeds = json.loads((FIXTURES / "original-server.json").read_text())[
        "ed25519_seeds_hex"
    ]
    server = await start_server(make_config(tmp_path))
    try:
        for user_id, seed in seeds.items():
            ident = Identity.from_seed_hex(user_id, seed)
            code, body = await get(server, f"/auth/users/{user_id}")
            assert code == 200 and body["public_key"] == ident.public_key_b64
            token = await login(server, ident)
            assert await server.service.auth.authenticate(token) == user_id
        # New registrations work on the upgraded schema.
        assert await register(server, Identity("dave")) == 201
    finally:
        await stop_server(server)


async def _wait_for_port(port: int, proc: subprocess.Popen) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited early: {proc.communicate()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("twistd did not start listening")


def _client_for(cert_path) -> treq.client.HTTPClient:
    trust = ssl.Certificate.loadPEM(Path(cert_path).read_bytes())
    return trusting_client(trust)


async def _exercise_running_daemon(proc, https, http, cert_path, repeat_stop=False):
    await _wait_for_port(https, proc)
    client = _client_for(cert_path)
    ident = Identity("twistd-user")
    response = await client.post(
        f"https://127.0.0.1:{https}/auth/register",
        data=json.dumps(
            {
                "user_id": ident.user_id,
                "username": "T",
                "public_key": ident.public_key_b64,
            }
        ).encode(),
    )
    assert response.code == 201
    await response.content()
    response = await treq.get(f"http://127.0.0.1:{http}/x", allow_redirects=False)
    assert response.code == 308
    await response.content()
    proc.send_signal(signal.SIGTERM)
    if repeat_stop:
        # More SIGTERMs while that shutdown runs (as `timeout` or a second
        # Ctrl-C sends them), 2 ms apart: signals that arrive before the
        # first one's handler ran count as one, later ones do not.
        for _ in range(50):
            if proc.poll() is not None:
                break
            time.sleep(0.002)
            proc.send_signal(signal.SIGTERM)
    for _ in range(200):
        if proc.poll() is not None:
            break
        await deferLater(reactor, 0.05, lambda: None)
    out, err = proc.communicate(timeout=5)
    # twistd re-raises the signal after a clean shutdown (as systemd expects).
    assert proc.returncode in (0, -signal.SIGTERM), (out, err)
    assert "shutdown complete" in out + err
    return out + err


def _state_env(tmp_path) -> dict[str, str]:
    """The JWT secret's file, which a PostgreSQL URL leaves the server no
    directory to put it in."""
    return {**os.environ, "DK_JWT_SECRET_FILE": str(tmp_path / "jwt-secret")}


@pytest_twisted.ensureDeferred
async def test_twistd_plugin_serves_and_stops_on_sigterm(tmp_path, db_target):
    https, http = free_port(), free_port()
    cert = tmp_path / "c.pem"
    proc = subprocess.Popen(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "dkserver",
            "--https",
            f"127.0.0.1:{https}",
            "--http",
            f"127.0.0.1:{http}",
            "--db",
            db_target,
            "--cert",
            str(cert),
            "--key",
            str(tmp_path / "k.pem"),
        ],
        cwd=tmp_path,
        env=_state_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A SIGTERM while stopping is logged, not a ReactorNotRunning traceback.
    log = await _exercise_running_daemon(proc, https, http, cert, repeat_stop=True)
    assert "SHA-256" in log and "shutdown complete" in log
    assert "SIGTERM again while shutting down; the shutdown goes on" in log
    assert "Traceback" not in log and "ReactorNotRunning" not in log


@pytest_twisted.ensureDeferred
async def test_tac_file_builds_the_same_service(tmp_path, db_target):
    https, http = free_port(), free_port()
    env = {
        **_state_env(tmp_path),
        "SERVER_ADDR": f"127.0.0.1:{https}",
        "HTTP_ADDR": f"127.0.0.1:{http}",
        "DK_DB": db_target,
        "DK_CERT": str(tmp_path / "c.pem"),
        "DK_KEY": str(tmp_path / "k.pem"),
    }
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "-y", str(ROOT / "tac" / "dkserver.tac")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    await _exercise_running_daemon(proc, https, http, tmp_path / "c.pem")


def test_invalid_configuration_stops_twistd_with_one_line(tmp_path):
    bad_cert = tmp_path / "bad.pem"
    bad_cert.write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    cases = [
        (["--rate", "0"], "MESSAGE_RATE_LIMIT"),
        (["--https", "nonsense"], "https"),
        (["--cert", str(bad_cert), "--key", str(tmp_path / "k.pem")], "cert"),
    ]
    for args, needle in cases:
        proc = subprocess.run(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "dkserver",
                "--db",
                str(tmp_path / "x.db"),
                *args,
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        assert needle in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


def test_short_jwt_secret_stops_startup(tmp_path):
    proc = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "dkserver",
            "--db",
            str(tmp_path / "x.db"),
            "--https",
            "127.0.0.1:0",
            "--http",
            "none",
        ],
        cwd=tmp_path,
        env={**os.environ, "JWT_SECRET": "short"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "JWT_SECRET" in proc.stderr and "Traceback" not in proc.stderr
