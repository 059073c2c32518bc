"""Run the ``dk`` CLI as a subprocess without blocking the Twisted reactor.

The dkserver under test runs in this process's reactor, so the CLI must be a
child process the test awaits (``spawnProcess``), never ``subprocess.run``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer, error, protocol, reactor

from tests.support.waiting import sleep

REPO = Path(__file__).resolve().parents[2]
MODULE_CMD = (sys.executable, "-m", "dkclient")


def free_port() -> int:
    """A loopback port free now, for a server restarted on the same port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    out: str
    err: str
    code: int | None

    def lines(self) -> list[str]:
        return [line for line in self.out.splitlines() if line.strip()]

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.lines()]

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin: bytes | None) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        code = reason.value.exitCode if reason.check(error.ProcessTerminated) else 0
        self.done.callback(
            Result(
                b"".join(self.out).decode("utf-8", "replace"),
                b"".join(self.err).decode("utf-8", "replace"),
                code,
            )
        )


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DK_")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def spawn(
    argv: list[str],
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    kill_after: float = 90.0,
) -> defer.Deferred:
    """Start a process; a Deferred firing with its :class:`Result`."""
    proto = _Collect(stdin)
    transport = reactor.spawnProcess(
        proto, argv[0], [str(a) for a in argv], env=env or child_env(), path=str(REPO)
    )

    def kill() -> None:
        try:
            transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass

    timer = reactor.callLater(kill_after, kill)

    def cancel_timer(result):
        if timer.active():
            timer.cancel()
        return result

    return proto.done.addBoth(cancel_timer)


class Dk:
    """The CLI of one user (one home) against one server."""

    def __init__(self, server, home: Path, command=MODULE_CMD) -> None:
        self.server = server
        self.home = Path(home)
        self.command = tuple(command)

    def argv(self, *args: str) -> list[str]:
        return [
            *self.command,
            "--server",
            f"https://127.0.0.1:{self.server.https_port}",
            "--cacert",
            self.server.config.cert_path,
            "--home",
            str(self.home),
            *args,
        ]

    def start(self, *args: str, stdin: bytes | None = None) -> defer.Deferred:
        return spawn(self.argv(*args), stdin=stdin)

    async def run(self, *args: str, stdin: bytes | None = None) -> Result:
        return await self.start(*args, stdin=stdin)

    async def ok(self, *args: str, stdin: bytes | None = None) -> Result:
        result = await self.run(*args, stdin=stdin)
        assert result.code == 0, str(result)
        return result


async def wait_online(server, user_id: str, timeout: float = 20.0) -> None:
    """Until ``user_id`` has an open WebSocket (GET /active-users)."""
    waited = 0.0
    while waited < timeout:
        response = await server.http.get(server.url("/active-users"))
        body = json.loads(await response.content())
        if user_id in body["online"]:
            return
        await sleep(0.1)
        waited += 0.1
    raise AssertionError(f"{user_id} never came online")
