"""A private Redis for the tests (and the cluster benchmark).

``redis-server`` from the installed package, started per test on a free
127.0.0.1 port with its working directory in a temporary folder, nothing
persisted (``--save ""``, no AOF).  Redis starts in milliseconds, so each
test gets its own server: pub/sub channels are global to a server (database
numbers do not separate them), and tests that restart Redis must not disturb
others.  ``DK_TEST_REDIS_URL`` names an existing server instead (flushed
before each test; pub/sub is then shared with whoever else uses it).

No stray servers: the server gets ``PR_SET_PDEATHSIG`` so it dies with the
test process even when that is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ENV_URL = "DK_TEST_REDIS_URL"
#: Set (by .ci/run): no Redis is a test error rather than a skip.
ENV_REQUIRE = "DK_TEST_REQUIRE_REDIS"

_START_TIMEOUT = 20.0


class RedisUnavailable(Exception):
    """No Redis for the tests; the message says why (a skip reason)."""


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for path in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if os.access(path, os.X_OK):
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process goes."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """One PING over a plain socket (no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A Redis the tests may use; :meth:`stop` and :meth:`start` restart a
    private one on the same port (for failure tests)."""

    host: str
    port: int
    binary: str | None = None
    dir: Path | None = None
    _proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def private(self) -> bool:
        return self.binary is not None

    def start(self) -> None:
        """Start (again) on this server's port; wait until it answers."""
        if not self.private:
            raise RuntimeError("an external Redis cannot be started by the tests")
        if self._proc is not None and self._proc.poll() is None:
            return
        assert self.dir is not None
        log = open(self.dir / "redis.log", "ab")
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--protected-mode",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while not ping(self.host, self.port):
            if self._proc.poll() is not None:
                tail = (self.dir / "redis.log").read_text(errors="replace")[-1000:]
                raise RedisUnavailable(f"redis-server exited: {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable("redis-server did not answer PING in time")
            time.sleep(0.01)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (SIGKILL by default: a crash); safe to call twice."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop for good and remove the directory."""
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def flush(self) -> None:
        """FLUSHALL (for an external server shared between tests)."""
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(64)


def open_server() -> RedisServer:
    """A fresh private Redis, or the one ``DK_TEST_REDIS_URL`` names (flushed).

    Raises :class:`RedisUnavailable` with the reason to report.
    """
    url = os.environ.get(ENV_URL)
    if url:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise RedisUnavailable(f"{ENV_URL} must be redis://host:port")
        server = RedisServer(parts.hostname, parts.port or 6379)
        if not ping(server.host, server.port):
            raise RedisUnavailable(f"{ENV_URL} ({url}) does not answer PING")
        server.flush()
        return server
    binary = find_redis_server()
    if binary is None:
        raise RedisUnavailable(
            "redis-server not found on PATH (Debian: apt-get install redis-server)"
        )
    last: Exception | None = None
    for _attempt in range(5):  # a free port can be taken before Redis binds it
        server = RedisServer(
            "127.0.0.1",
            _free_port(),
            binary=binary,
            dir=Path(tempfile.mkdtemp(prefix="dk-redis-")),
        )
        try:
            server.start()
        except RedisUnavailable as e:
            last = e
            server.close()
            continue
        return server
    raise last or RedisUnavailable("redis-server did not start")
