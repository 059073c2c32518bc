"""sd_notify from the real ``twistd dkserver``: a unix datagram socket of the
test's own is its NOTIFY_SOCKET, as systemd's would be for a Type=notify
unit with WatchdogSec=.

What is checked is the order of the datagrams, never how long anything
took: READY=1 comes first, WATCHDOG=1 only after it, none while the
database cannot commit (another connection holds its lock), again once it
can, and STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import shutil
import signal
import socket
import sqlite3
import tempfile
import uuid
from pathlib import Path

import pytest
import pytest_twisted

from tests.reliability.daemon import Daemon
from tests.support.waiting import sleep

#: Ticks every 0.15 s: WatchdogSec=0.3 as systemd would pass it.
WATCHDOG_USEC = "300000"


class NotifySocket:
    """The receiving end of sd_notify: every datagram, parsed."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(
                line.split("=", 1) for line in data.decode().splitlines() if line
            )
            self.messages.append(fields)

    async def wait_for(self, predicate, what: str, timeout: float = 30.0) -> int:
        """Index of the first message from now on that matches."""
        start = len(self.messages)
        waited = 0.0
        while True:
            self.drain()
            for i in range(start, len(self.messages)):
                if predicate(self.messages[i]):
                    return i
            if waited >= timeout:
                raise AssertionError(f"no sd_notify {what}; got {self.messages}")
            await sleep(0.05)
            waited += 0.05

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir():
    """A directory short enough for a unix socket path (108 bytes)."""
    path = tempfile.mkdtemp(prefix="dk-notify-", dir="/tmp")
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _watchdog(m: dict) -> bool:
    return m.get("WATCHDOG") == "1"


@pytest_twisted.ensureDeferred
async def test_ready_watchdog_only_while_the_database_commits_and_stopping(
    tmp_path, short_dir
):
    notify = NotifySocket(str(short_dir / "notify"))
    daemon = Daemon(tmp_path, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC=WATCHDOG_USEC)
    try:
        await daemon.start()
        ready = await notify.wait_for(lambda m: m.get("READY") == "1", "READY=1")
        assert notify.messages[ready]["STATUS"].startswith("serving")
        assert not any(_watchdog(m) for m in notify.messages[:ready])
        await notify.wait_for(_watchdog, "WATCHDOG=1 after READY")

        lock = sqlite3.connect(daemon.database.path, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            failing = await notify.wait_for(
                lambda m: "not ready: database" in m.get("STATUS", ""),
                "a not-ready STATUS while the database is locked",
            )
            # Two more failed checks, and no WATCHDOG=1 among them.
            again = await notify.wait_for(
                lambda m: "not ready" in m.get("STATUS", ""), "a second failed check"
            )
            await notify.wait_for(
                lambda m: "not ready" in m.get("STATUS", ""), "a third failed check"
            )
            notify.drain()
            during = notify.messages[failing:]
            assert again > failing
            assert not any(_watchdog(m) for m in during), during
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        back = await notify.wait_for(_watchdog, "WATCHDOG=1 after the lock is gone")
        assert any(
            m.get("STATUS", "").startswith("serving")
            for m in notify.messages[failing:back]
        )

        daemon.signal(signal.SIGTERM)
        # twistd ends by re-raising SIGTERM once the shutdown completed.
        assert await daemon.wait_exit(30) is not None, daemon.log_tail()
        assert "shutdown complete" in daemon.log_text()
        stopping = await notify.wait_for(
            lambda m: m.get("STOPPING") == "1", "STOPPING=1", timeout=5
        )
        assert notify.messages[stopping]["STATUS"] == "shutting down"
        assert notify.messages[-1] == {"STATUS": "stopped"}
    finally:
        daemon.kill_now()
        notify.close()


@pytest_twisted.ensureDeferred
async def test_abstract_notify_socket_gets_ready(tmp_path):
    notify = NotifySocket(f"@dk-test-{uuid.uuid4().hex}")
    daemon = Daemon(tmp_path, NOTIFY_SOCKET=notify.address)
    try:
        await daemon.start()
        await notify.wait_for(lambda m: m.get("READY") == "1", "READY=1")
        await daemon.stop()
        notify.drain()
        # No WATCHDOG_USEC: no watchdog pings at all.
        assert not any(_watchdog(m) for m in notify.messages)
        assert any(m.get("STOPPING") == "1" for m in notify.messages)
    finally:
        daemon.kill_now()
        notify.close()


@pytest_twisted.ensureDeferred
async def test_without_notify_socket_the_daemon_runs_as_before(tmp_path):
    daemon = Daemon(tmp_path, WATCHDOG_USEC=WATCHDOG_USEC)
    daemon.env.pop("NOTIFY_SOCKET", None)
    try:
        await daemon.start()
        assert await daemon.stop() is not None
        assert "shutdown complete" in daemon.log_text()
        assert "sd_notify" not in daemon.log_text()
    finally:
        daemon.kill_now()
