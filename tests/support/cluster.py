"""Several real dkserver nodes (``twistd dkserver`` processes) as one
cluster: one PostgreSQL database, one Redis, a shared JWT secret file.

Each node is a :class:`~tests.reliability.daemon.Daemon` on its own free
loopback port, directory (certificate, log) and ``--node-id``; a node's
handle is what ``tests.support.client`` and ``tests.support.ws`` expect of
a server, so a test talks to ``cluster[1]`` like to any server.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from pathlib import Path
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, gatherResults

from tests.reliability.daemon import Daemon, DaemonHandle
from tests.support.client import get
from tests.support.waiting import wait_for


class Node(Daemon):
    """One node: a daemon that knows its cluster name."""

    def __init__(self, directory: Path, node_id: str, **kwargs) -> None:
        super().__init__(directory, **kwargs)
        self.node_id = node_id
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: sockets stay open, nothing answers (a hung machine)."""
        self.signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        """SIGKILL (a crash) and reap it."""
        if self.frozen:
            self.thaw()
        self.kill_now()


class Cluster:
    """``size`` nodes named ``n0``, ``n1``, ... against ``pg_url`` and
    ``redis_url``."""

    def __init__(self, directory: Path, pg_url: str, redis_url: str, size: int = 3):
        self.dir = Path(directory)
        self.redis_url = redis_url
        #: The tests' RedisServer when they may restart it (see restore).
        self.redis_server = None
        self._users = 0
        self.pg_url = pg_url
        secret = self.dir / "jwt-secret"
        self.nodes: list[Node] = []
        for i in range(size):
            node_dir = self.dir / f"n{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(
                Node(
                    node_dir,
                    f"n{i}",
                    db=pg_url,
                    extra_args=("--redis", redis_url, "--node-id", f"n{i}"),
                    DK_JWT_SECRET_FILE=str(secret),
                )
            )

    def __getitem__(self, index: int) -> DaemonHandle:
        """The running node's server handle (for client.py and ws.py)."""
        handle = self.nodes[index].handle
        assert handle is not None, f"node n{index} is not running"
        return handle

    def __len__(self) -> int:
        return len(self.nodes)

    async def start(self) -> Cluster:
        # The first node migrates and writes the shared secret; the others
        # then start together.
        await self.nodes[0].start(timeout=30)
        await gatherResults(
            [Deferred.fromCoroutine(n.start(timeout=30)) for n in self.nodes[1:]]
        )
        await self.wait_connected()
        return self

    async def wait_connected(self, timeout: float = 15.0) -> None:
        """Until every running node has stamped its heartbeat into Redis in
        the last two seconds (the nodes see each other by their next one)
        and its subscriber connection is back.

        A fresh stamp, not just an entry: after a Redis pause or restart a
        node whose connection has not come back still has its old one."""
        names = {n.node_id for n in self.nodes if n.handle is not None}

        def beating() -> bool:
            seconds, micros = redis_command(self.redis_url, "TIME")
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            found = redis_command(
                self.redis_url, "ZRANGEBYSCORE", "dk:nodes", str(now_ms - 2000), "+inf"
            )
            return names <= set(found)

        def subscribed() -> bool:
            # Each node's subscriber holds its own forward channel.
            reply = redis_command(
                self.redis_url, "PUBSUB", "NUMSUB", *(f"dk:node:{n}" for n in names)
            )
            return all(int(count) >= 1 for count in reply[1::2])

        what = f"heartbeats and subscribers of {sorted(names)}"
        await wait_for(lambda: beating() and subscribed(), what, timeout)

    async def active_users(self, index: int) -> tuple[set[str], set[str]]:
        code, body = await get(self[index], "/active-users")
        assert code == 200, body
        return set(body["online"]), set(body["offline"])

    def user(self, name: str) -> str:
        """A user id no other test of this cluster uses."""
        self._users += 1
        return f"{name}{self._users}"

    async def restore(self) -> None:
        """Every node running and unfrozen, Redis up: the next test's start."""
        if self.redis_server is not None and self.redis_server.private:
            self.redis_server.start()  # a no-op when it runs
        for node in self.nodes:
            if node.frozen:
                node.thaw()
            if node.proc is None or node.proc.poll() is not None:
                await node.drop_handle()
                await node.start(timeout=30)
        await self.wait_connected()

    async def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                if node.frozen:
                    node.thaw()
                await node.stop()

    def kill_all(self) -> None:
        for node in self.nodes:
            node.kill()

    def logs(self) -> str:
        return "\n".join(
            f"===== {n.node_id} =====\n{n.log_tail(3000)}" for n in self.nodes
        )


def redis_command(url: str, *words: str):
    """One command over a plain socket; a small RESP reader (arrays, bulk
    and simple strings, integers) is all the harness needs."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as s:
        request = b"*%d\r\n" % len(words) + b"".join(
            b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words
        )
        s.sendall(request)
        return _read_reply(s.makefile("rb"))


def _read_reply(reader):
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if int(rest) < 0:
            return None
        return reader.read(int(rest) + 2)[:-2].decode()
    if kind == b"*":
        return [_read_reply(reader) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected Redis reply {line!r}")


def pg_rows(pg_url: str, sql: str, *args) -> list[tuple]:
    """Rows of one query on the cluster's database (psycopg, %s params)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()
