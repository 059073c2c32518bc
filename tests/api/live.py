"""A real ``twistd dkserver`` for the API tests, driven synchronously.

The test user's own WebSocket agent stays connected and answers forward
requests, and the operator folders hold small files, so every endpoint
has its 200 to reach.

schemathesis calls the server with ``requests`` from the test's own thread,
so this starts the daemon as a subprocess and waits with plain sockets and
``requests`` rather than the reactor (tests/reliability/daemon.py is the
reactor-driven twin; its port, path and interpreter helpers are reused).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from nacl.signing import SigningKey
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

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


def forward_answer(frame: dict) -> dict | None:
    """The agent's answer to a forward request frame (None for other frames).

    Document requests get a success, other forwards (``/direct-message/``)
    an answer text, so both endpoints have their 200 to reach.
    """
    if not frame.get("is_forward_message"):
        return None
    try:
        inner = json.loads(json.loads(frame["content"])["message"])
    except (ValueError, KeyError, TypeError):
        inner = {}
    kind = inner.get("type") if isinstance(inner, dict) else None
    if kind in ("register_document", "append_document"):
        answer = {"type": "register_document_success", "message": "stored"}
    else:
        answer = {"type": "forward_response", "message": "an answer"}
    return {
        "to": frame["to"],
        "is_forward_message": True,
        "content": json.dumps(
            {"type": "forward_response", "message": json.dumps(answer)}
        ),
    }


class Agent:
    """The test user's WebSocket client, answering forward requests.

    websockets' asyncio client on an event loop of its own thread, not its
    threaded client, which reads the TLS socket in one thread while writing
    it in another (see ``_echo_over_wss`` in
    tests/conformance/test_autobahn_conformance.py).
    """

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        self._url = url
        self._context = context
        self._opened = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._run(),), daemon=True
        )

    def start(self, timeout: float) -> None:
        self._thread.start()
        self._opened.wait(timeout)
        assert self._ws is not None, (
            f"the forward-answering agent did not connect: {self._error!r}"
        )

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            async with connect(self._url, ssl=self._context, open_timeout=10) as ws:
                self._ws = ws
                self._opened.set()
                async for text in ws:
                    reply = forward_answer(json.loads(text))
                    if reply is not None:
                        await ws.send(json.dumps(reply))
        except ConnectionClosed:
            pass
        except Exception as e:
            self._error = e  # for start(); the thread's excepthook shows it too
            raise
        finally:
            self._opened.set()

    def close(self) -> None:
        """Close the connection and wait for the agent's thread to end."""
        if self._thread.is_alive() and self._ws is not None:
            try:
                done = asyncio.run_coroutine_threadsafe(self._ws.close(), self._loop)
                done.result(10)
            except RuntimeError:  # the loop ended meanwhile
                pass
        self._thread.join(10)


def connect_agent(base: str, token: str) -> Agent:
    """A WebSocket client of the test user that answers forward requests."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = base.replace("https://", "wss://") + f"/ws?token={token}"
    agent = Agent(url, context)
    agent.start(15)
    return agent


def operator_folders(directory: Path) -> dict[str, str]:
    """Small DK_TRACKER_DIR and DK_APP_DIR contents so their 200s are reachable."""
    trackers = directory / "trackers"
    (trackers / "nested").mkdir(parents=True)
    (trackers / "tracker_list.json").write_text('[{"name": "sample"}]')
    zip_bytes = b"PK\x05\x06" + bytes(18)  # an empty zip archive
    (trackers / "sample.zip").write_bytes(zip_bytes)
    (trackers / "nested" / "nested.zip").write_bytes(zip_bytes)
    apps = directory / "apps"
    apps.mkdir()
    for name in (
        "DistributedKnowledge-linux.AppImage",
        "DistributedKnowledge-darwin.dmg",
        "DistributedKnowledge-windows.exe",
    ):
        (apps / name).write_bytes(b"binary " + name.encode())
    return {"DK_TRACKER_DIR": str(trackers), "DK_APP_DIR": str(apps)}


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
        "DK_WRITE_RATE_LIMIT": "10000",
        "DK_WRITE_BURST_LIMIT": "10000",
        "DK_PUBLIC_READ_RATE_LIMIT": "10000",
        "DK_PUBLIC_READ_BURST_LIMIT": "10000",
        # The agent's forward answers are WebSocket messages and take from
        # the message bucket; schemathesis asks faster than 5 a second.
        "MESSAGE_RATE_LIMIT": "10000",
        "MESSAGE_BURST_LIMIT": "10000",
        **operator_folders(directory),
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
        token = register_and_login(base, USER_ID)
        agent = connect_agent(base, token)
        try:
            yield LiveServer(base, token, log_path)
        finally:
            agent.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
