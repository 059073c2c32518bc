"""The real ``twistd dkserver`` as a subprocess, and a test-side handle on it.

:class:`Daemon` starts, signals and restarts the server on one database,
certificate and port.  :class:`DaemonHandle` is what ``tests.support.client``
and ``tests.support.ws`` expect of a server (``https_port``, ``trust``,
``url()``, ``http``), built from the certificate the daemon generated.

The subprocess imports dkserver from the tree these tests live in (its root
goes first on ``PYTHONPATH``), so a throwaway copy of the repository runs its
own copy of the server.

:class:`SqliteFile` and :class:`PostgresDatabase` read what the daemon
stored, on either backend, through a connection of their own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from twisted.internet import reactor, ssl
from twisted.web.client import HTTPConnectionPool

from tests.support.server import trusting_client
from tests.support.waiting import sleep

ROOT = Path(__file__).resolve().parents[2]
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonHandle:
    """One run of the daemon, as the test-support clients want a server."""

    def __init__(self, https_port: int, cert_path: Path) -> None:
        self.https_port = https_port
        self.trust = ssl.Certificate.loadPEM(cert_path.read_bytes())
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = trusting_client(self.trust, self.pool)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def url(self, path: str) -> str:
        return self.base + path

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


class Daemon:
    """``twistd -n dkserver`` on a fixed port, database and certificate."""

    def __init__(
        self,
        directory: Path,
        db: str | None = None,
        extra_args: tuple[str, ...] = (),
        twistd_args: tuple[str, ...] = (),
        **env: str,
    ) -> None:
        """``db``: the ``--db`` value, a PostgreSQL URL or (default) ``dk.db``
        in ``directory``; ``extra_args`` follow the others on the command line,
        ``twistd_args`` go to twistd itself (before ``dkserver``)."""
        self.dir = Path(directory)
        self.port = free_port()
        self.database: SqliteFile | PostgresDatabase = (
            PostgresDatabase(db)
            if db is not None and "://" in db
            else SqliteFile(Path(db) if db is not None else self.dir / "dk.db")
        )
        self.extra_args = tuple(extra_args)
        self.twistd_args = tuple(twistd_args)
        self.cert = self.dir / "server.pem"
        self.key = self.dir / "server.key"
        self.log_path = self.dir / "daemon.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "MESSAGE_RATE_LIMIT": "1e6",
            "MESSAGE_BURST_LIMIT": "1000000",
            "LOGIN_RATE_LIMIT": "10000",
            "LOGIN_BURST_LIMIT": "10000",
            "DK_PUBLIC_READ_RATE_LIMIT": "10000",
            "DK_PUBLIC_READ_BURST_LIMIT": "10000",
            **env,
        }
        self.env.pop("JWT_SECRET", None)  # generated once, kept beside the db
        if isinstance(self.database, PostgresDatabase):
            self.env.setdefault("DK_JWT_SECRET_FILE", str(self.dir / "jwt-secret"))
        self.proc: subprocess.Popen | None = None
        self.handle: DaemonHandle | None = None
        self.runs = 0

    # -- lifecycle -----------------------------------------------------------

    async def start(self, timeout: float = 15.0) -> DaemonHandle:
        """Start (or restart) on the same files and port; wait until it serves."""
        assert self.proc is None or self.proc.poll() is not None, "still running"
        self.runs += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== run {self.runs} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    TWISTD,
                    "-n",
                    "--pidfile=",
                    *self.twistd_args,
                    "dkserver",
                    "--https",
                    f"127.0.0.1:{self.port}",
                    "--http",
                    "none",
                    "--db",
                    self.database.arg,
                    "--cert",
                    str(self.cert),
                    "--key",
                    str(self.key),
                    *self.extra_args,
                ],
                cwd=self.dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"twistd exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"twistd did not start:\n{self.log_tail()}")
            if self.cert.exists() and self._port_open():
                handle = DaemonHandle(self.port, self.cert)
                if await self._serves(handle):
                    self.handle = handle
                    return handle
                await handle.close()
            await sleep(0.05)

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    @staticmethod
    async def _serves(handle: DaemonHandle) -> bool:
        """True once a request that needs the database is answered."""
        try:
            response = await handle.http.get(handle.url("/auth/check-userid/probe"))
            await response.content()
            return response.code == 200
        except Exception:
            return False

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if it is still running after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await sleep(0.02)
        return self.proc.poll()

    async def drop_handle(self) -> None:
        if self.handle is not None:
            await self.handle.close()
            self.handle = None

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL if it hangs); its exit status."""
        await self.drop_handle()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        code = await self.wait_exit(timeout)
        if code is None:
            self.kill_now()
        return code

    def kill_now(self) -> None:
        """Synchronous last resort for ``finally`` blocks."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # -- inspection ----------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]


class SqliteFile:
    """The daemon's SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.arg = str(path)

    def snapshot(self, name: str) -> SqliteFile:
        """A copy of the database files as they are now (e.g. right after a
        crash), in a directory ``name`` beside it."""
        target = self.path.parent / name
        target.mkdir()
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                shutil.copy(src, target / (self.path.name + suffix))
        return SqliteFile(target / self.path.name)

    def integrity_problems(self) -> list[str]:
        """``PRAGMA integrity_check`` and ``foreign_key_check`` findings
        (empty: ok)."""
        conn = sqlite3.connect(self.path)
        try:
            problems = [
                f"integrity_check: {row[0]}"
                for row in conn.execute("PRAGMA integrity_check")
                if row[0] != "ok"
            ]
            problems += [
                f"foreign_key_check: {row}"
                for row in conn.execute("PRAGMA foreign_key_check")
            ]
        finally:
            conn.close()
        return problems + arrival_order_problems(self.messages())

    def messages(self, read_only: bool = False) -> dict[int, tuple]:
        """id -> (from_user, to_user, content, status, is_broadcast,
        received_ns) of every row.

        ``read_only`` opens it beside a running server without writing to it.
        """
        if read_only:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            conn = sqlite3.connect(self.path)
        try:
            return {row[0]: tuple(row[1:]) for row in conn.execute(_MESSAGES)}
        finally:
            conn.close()


def arrival_order_problems(rows: dict[int, tuple]) -> list[str]:
    """Message ids follow arrival: ``received_ns`` (the last column of
    :data:`_MESSAGES`) never decreases as ids grow."""
    previous: tuple[int, int] | None = None
    problems = []
    for mid in sorted(rows):
        received = rows[mid][-1]
        if previous is not None and received is not None and received < previous[1]:
            problems.append(f"id {mid} arrived before id {previous[0]}")
        if received is not None:
            previous = (mid, received)
    return problems[:5]


_MESSAGES = (
    "SELECT id, from_user, to_user, content, status, is_broadcast, received_ns"
    " FROM messages"
)

#: Every single-column foreign key: (table, column, parent table, parent column).
_FOREIGN_KEYS = """
SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text,
       pa.attname, c.convalidated
FROM pg_constraint c
JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = c.confkey[1]
WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
"""


class PostgresDatabase:
    """The daemon's PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.arg = url

    def snapshot(self, name: str) -> PostgresDatabase:
        """The database itself: with the daemon stopped nothing changes it
        until the next start, so checking it now is checking the snapshot."""
        return self

    def _query(self, sql: str) -> list[tuple]:
        with psycopg.connect(self.arg, connect_timeout=10) as conn:
            return conn.execute(sql).fetchall()

    def integrity_problems(self) -> list[str]:
        """PostgreSQL keeps its files consistent itself; what is checked is
        what dkserver relies on: every foreign key holds (and is validated),
        no id is taken twice, message ids follow arrival, and every id
        sequence is past its table's highest id, so the next insert cannot
        collide."""
        from dkserver.store.pg_schema import SEQUENCED_TABLES

        problems = []
        for table, column, parent, parent_column, valid in self._query(_FOREIGN_KEYS):
            if not valid:
                problems.append(f"foreign key {table}.{column} not validated")
            orphans = self._query(
                f"SELECT count(*) FROM {table} t WHERE t.{column} IS NOT NULL"
                f" AND NOT EXISTS (SELECT 1 FROM {parent} p"
                f" WHERE p.{parent_column} = t.{column})"
            )[0][0]
            if orphans:
                problems.append(f"{orphans} rows of {table}.{column} not in {parent}")
        for table in SEQUENCED_TABLES:
            dups = self._query(
                f"SELECT id FROM {table} GROUP BY id HAVING count(*) > 1 LIMIT 5"
            )
            if dups:
                problems.append(f"{table}: ids taken twice: {dups}")
            ((max_id, last),) = self._query(
                f"SELECT (SELECT max(id) FROM {table}), pg_sequence_last_value("
                f"pg_get_serial_sequence('{table}', 'id')::regclass)"
            )
            next_id = 1 if last is None else last + 1
            if max_id is not None and next_id <= max_id:
                problems.append(
                    f"{table}: sequence hands out {next_id}, max(id) is {max_id}"
                )
        return problems + arrival_order_problems(self.messages())

    def messages(self, read_only: bool = False) -> dict[int, tuple]:
        """As :meth:`SqliteFile.messages` (a reader never writes here)."""
        return {row[0]: tuple(row[1:]) for row in self._query(_MESSAGES)}
