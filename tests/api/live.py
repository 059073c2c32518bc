"""A real ``twistd dkserver`` for the API tests, driven synchronously.

schemathesis calls the server with ``requests`` from the test's own thread,
so this starts the daemon as a subprocess and waits with plain sockets and
``requests`` rather than the reactor (tests/reliability/daemon.py is the
reactor-driven twin; its port, path and interpreter helpers are reused).
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from nacl.signing import SigningKey

from tests.reliability.daemon import ROOT, TWISTD, free_port

#: The registered user of the run; also the administrator, so /stats answers 200.
USER_ID = "api-tester"


@dataclass
class LiveServer:
    base_url: str
    token: str
    log_path: Path


def _wait_until_serving(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited {proc.returncode}:\n{log.read_text()}")
        try:
            r = requests.get(f"{base}/auth/check-userid/probe", verify=False, timeout=2)
            if r.status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"twistd did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def register_and_login(base: str, user_id: str) -> str:
    key = SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    r = requests.post(
        f"{base}/auth/register",
        json={"user_id": user_id, "username": "API tester", "public_key": public},
        verify=False,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    r = requests.post(
        f"{base}/auth/login", json={"user_id": user_id}, verify=False, timeout=10
    )
    challenge = r.json()["challenge"]
    signature = base64.b64encode(key.sign(challenge.encode()).signature).decode()
    r = requests.post(
        f"{base}/auth/login?verify=true",
        json={"user_id": user_id, "signature": signature},
        verify=False,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["token"]


def start(directory: Path):
    """Start the daemon in ``directory``; a generator that stops it on close."""
    port = free_port()
    client_dir = directory / "dist"
    client_dir.mkdir()
    # A stand-in artifact so /download/{platform} has a 200 to answer.
    (client_dir / "dk.pyz").write_bytes(b"PK\x05\x06" + bytes(18))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
        # High enough that 429s do not crowd out everything else; the
        # document still lists 429 where the limit applies.
        "LOGIN_RATE_LIMIT": "10000",
        "LOGIN_BURST_LIMIT": "10000",
        "DK_ADMIN_USERS": USER_ID,
        "DK_CLIENT_DIR": str(client_dir),
        "DK_FORWARD_TIMEOUT": "2",
    }
    env.pop("JWT_SECRET", None)
    log_path = directory / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "dkserver",
                "--https",
                f"127.0.0.1:{port}",
                "--http",
                "none",
                "--db",
                str(directory / "dk.db"),
                "--cert",
                str(directory / "server.pem"),
                "--key",
                str(directory / "server.key"),
            ],
            cwd=directory,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"https://127.0.0.1:{port}"
        _wait_until_serving(proc, base, log_path)
        yield LiveServer(base, register_and_login(base, USER_ID), log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
