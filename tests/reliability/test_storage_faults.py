"""A database that cannot be written, under a running dkserver: refuse,
keep reading, recover by itself, lose nothing acknowledged.

Each fault is real: a full filesystem (a small tmpfs mounted for the test,
filled with a file), a read-only database (the SQLite file and its WAL made
immutable with ``chattr +i`` on a loop-mounted ext4 image: the tests run as
root, for whom ``chmod`` changes nothing, and ext4 refuses writes through
already-open descriptors of an immutable file), a lock held by another
process (``BEGIN EXCLUSIVE`` on the file, held past the busy timeout), and
on PostgreSQL a read-only server (``default_transaction_read_only``),
revoked rights (``REVOKE INSERT``) for a role of the test's own, and a full
tablespace (on a small tmpfs) holding ``messages``.

While the fault lasts, senders streaming signed direct messages are told
"Internal error: message not stored; please resend", REST writes answer 503
with the JSON error shape, reads answer (a user, an unknown user, the
active users) and an offline user who connects gets the messages stored for
them before the fault; ``dkserver_store_writable`` is 0, and the log has one
warning naming the cause.  Once the fault is undone, with no restart,
messages are stored and delivered again, REST writes work, the gauge is 1
and the log says so once.  Then, as in test_postgres_restart.py: every
frame was stored or refused (``stored + refused == sent`` per sender),
every stored message reached its recipient exactly once and is marked
delivered, and the database is sound.

Also: started on a full disk or an immutable file, dkserver exits with one
line naming the cause; stopped during a fault, it still shuts down cleanly.

Mounting needs root (CAP_SYS_ADMIN, and CAP_LINUX_IMMUTABLE for chattr):
without it the tests that mount are skipped with the reason, or fail when
``DK_TEST_REQUIRE_MOUNTS`` is set (as CI sets it): tests/support/mounts.py.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from dkserver.store import errors
from tests.reliability.daemon import Daemon
from tests.reliability.streaming import (
    Receiver,
    Streamer,
    Traffic,
    check_nothing_lost,
    open_clients,
    open_ws,
    outage_settled,
    refusals,
)
from tests.support import mounts
from tests.support.client import Identity, get, post_json, register_and_login
from tests.support.waiting import wait_for
from tests.support.ws import signed_frame

#: Generous bounds for a loaded machine (not performance bounds).  A held
#: SQLite lock costs every write the busy timeout (5 s) before it fails.
OUTAGE_TIMEOUT = 40.0

#: What the writer logs when writes start failing, and when they work again.
OUTAGE_WARNING = "refusing messages until the database is back"
RECOVERY_INFO = "database writable again"


class DiskFull:
    """A 24 MiB tmpfs holding the database; broken by filling it."""

    cause = errors.DISK_FULL
    #: What dkserver's one line says when it cannot start on the fault.
    at_startup = "disk full"

    def __init__(self, tmp_path: Path) -> None:
        self.dir = mounts.mounted(
            tmp_path / "small", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs"
        )
        self.filler = self.dir / "filler"

    @property
    def db(self) -> str:
        return str(self.dir / "dk.db")

    def break_it(self) -> None:
        with open(self.filler, "wb", buffering=0) as f:
            for chunk in (2**20, 4096, 512):
                block = b"\0" * chunk
                try:
                    while True:
                        f.write(block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        assert shutil.disk_usage(self.dir).free < 4096

    def fix(self) -> None:
        self.filler.unlink()

    def close(self) -> None:
        mounts.unmount(self.dir)


class ReadOnly:
    """A loop-mounted ext4 image holding the database; broken by making the
    database file and its WAL immutable (not the ``-shm`` file: a write to
    its shared mapping would then kill the process with SIGBUS)."""

    cause = errors.READ_ONLY
    at_startup = "is not readable and writable"

    def __init__(self, tmp_path: Path) -> None:
        image = mounts.ext4_image(tmp_path / "ext4.img", 64 * 2**20)
        self.dir = mounts.mounted(tmp_path / "ext4", "-o", "loop", str(image))
        self.files = [self.dir / "dk.db", self.dir / "dk.db-wal"]

    @property
    def db(self) -> str:
        return str(self.dir / "dk.db")

    def break_it(self) -> None:
        mounts.run("chattr", "+i", *map(str, self.files))

    def fix(self) -> None:
        mounts.run("chattr", "-i", *map(str, self.files))

    def close(self) -> None:
        subprocess.run(
            ["chattr", "-i", *map(str, self.files)], capture_output=True, timeout=60
        )
        mounts.unmount(self.dir)


class Locked:
    """Another process's ``BEGIN EXCLUSIVE`` on the database file, held until
    :meth:`fix` (in WAL mode it blocks writers, not readers)."""

    cause = errors.LOCKED

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "dk.db"
        self.conn: sqlite3.Connection | None = None

    @property
    def db(self) -> str:
        return str(self.path)

    def break_it(self) -> None:
        self.conn = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self.conn.execute("BEGIN EXCLUSIVE")

    def fix(self) -> None:
        self.conn.execute("COMMIT")
        self.conn.close()
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class PgReadOnly:
    """The whole server read-only for new transactions (as a standby, or
    ``default_transaction_read_only``), through ``ALTER SYSTEM`` + reload,
    which reaches the daemon's open connections too."""

    cause = errors.READ_ONLY

    def __init__(self, admin) -> None:
        self.admin = admin

    def break_it(self) -> None:
        self.admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        self.admin.execute("SELECT pg_reload_conf()")

    def fix(self) -> None:
        self.admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
        self.admin.execute("SELECT pg_reload_conf()")


class PgRevoked:
    """The daemon's role loses INSERT on ``messages`` (and on ``users``, for
    the REST write), then gets it back.  Delivery marks (UPDATEs) and
    session rows still commit meanwhile: they must not end the outage."""

    cause = errors.PERMISSION_DENIED

    def __init__(self, db_admin, role: str) -> None:
        self.db_admin = db_admin
        self.role = role

    def break_it(self) -> None:
        self.db_admin.execute(
            f"REVOKE INSERT ON messages, users, user_descriptions FROM {self.role}"
        )

    def fix(self) -> None:
        self.db_admin.execute(
            f"GRANT INSERT ON messages, users, user_descriptions TO {self.role}"
        )


class PgDiskFull:
    """``messages`` (and ``user_descriptions``, empty: a REST write) moved to
    a tablespace on a 16 MiB tmpfs, which is then filled: inserts that need
    a new page fail with SQLSTATE 53100 while the other tables (and the
    WAL) still have room."""

    cause = errors.DISK_FULL
    TABLES = ("messages", "user_descriptions")
    #: ``users`` stays out: a row that still fits in a page of the table
    #: needs no space, and registering would work (as on a real full disk).
    register_refused = False

    def __init__(self, own_postgres, admin, db_admin) -> None:
        # Somewhere the server's account can reach (pytest's tmp_path is
        # root's, mode 0700), owned by that account.
        owner = os.stat(own_postgres.data)
        self.parent = Path(tempfile.mkdtemp(prefix="dk-pg-space-"))
        self.parent.chmod(0o755)
        self.dir = mounts.mounted(
            self.parent / "space",
            "-t",
            "tmpfs",
            "-o",
            f"size=16m,mode=0700,uid={owner.st_uid},gid={owner.st_gid}",
            "tmpfs",
        )
        admin.execute(f"CREATE TABLESPACE dk_small LOCATION '{self.dir}'")
        for table in self.TABLES:
            db_admin.execute(f"ALTER TABLE {table} SET TABLESPACE dk_small")
        self.filler = self.dir / "filler"

    break_it = DiskFull.break_it
    fix = DiskFull.fix

    def close(self) -> None:
        mounts.unmount(self.dir)
        shutil.rmtree(self.parent, ignore_errors=True)


def writable_gauge(metrics_text: str) -> float | None:
    for line in metrics_text.splitlines():
        if line.startswith("dkserver_store_writable "):
            return float(line.split()[1])
    return None


async def outage(daemon: Daemon, fault) -> None:
    """The whole scenario of the module docstring, on ``daemon``'s database."""
    traffic = Traffic()
    clients = []
    streamers: list[Streamer] = []
    try:
        server = await daemon.start(timeout=60)
        senders = [Identity("s0"), Identity("s1")]
        receivers = [Identity("r0"), Identity("r1")]
        tokens, rx, tx = await open_clients(server, senders, receivers)
        clients += [*rx.values(), *tx.values()]
        # Stored before the fault for a user who connects during it.
        offline = Identity("off")
        off_token = await register_and_login(server, offline)
        for i in range(5):
            content = f"stored-before-{i}"
            tx["s0"].send_json(signed_frame(senders[0], "off", content))
            traffic.sent[content] = ("s0", "off")
        await wait_for(
            lambda: (
                sum(
                    1
                    for r in daemon.database.messages(read_only=True).values()
                    if r[1] == "off"
                )
                == 5
            ),
            "the offline user's messages stored",
            timeout=OUTAGE_TIMEOUT,
        )
        streamers = [
            Streamer(s, tx[s.user_id], list(rx), traffic, (64, 256), 1, 0.05)
            for s in senders
        ]

        def received_from(user_id: str, after_seq: int) -> bool:
            return any(
                f.get("from") == user_id
                and f["content"].startswith(user_id + "-")
                and int(f["content"].split("|")[0].rsplit("-", 1)[1]) >= after_seq
                for c in rx.values()
                for f in c.received
            )

        await wait_for(
            lambda: all(received_from(s.user_id, 10) for s in senders),
            "messages flowing before the fault",
            timeout=OUTAGE_TIMEOUT,
        )

        await deferToThread(fault.break_it)
        await wait_for(
            lambda: all(refusals(tx[s.user_id]) >= 3 for s in senders),
            "every sender told to resend",
            timeout=OUTAGE_TIMEOUT,
            interval=0.1,
        )
        assert daemon.proc.poll() is None, daemon.log_tail()
        # REST writes: 503, the JSON error shape.
        late = Identity("late")
        if getattr(fault, "register_refused", True):
            code, body = await post_json(
                server,
                "/auth/register",
                {
                    "user_id": late.user_id,
                    "username": "late",
                    "public_key": late.public_key_b64,
                },
            )
            assert code == 503 and body["error"] is True, (code, body)
            assert isinstance(body["message"], str) and body["message"]
        code, body = await post_json(
            server,
            "/user/descriptions",
            ["while the disk is full"],
            {"Authorization": f"Bearer {tokens['s0']}"},
        )
        assert code == 503 and body["error"] is True, (code, body)
        assert isinstance(body["message"], str) and body["message"]
        # Reads still answer, from the database.
        code, body = await get(server, "/auth/users/nobody")
        assert code == 404 and body["error"] is True, (code, body)
        code, body = await get(server, "/auth/users/r1")
        assert code == 200 and body["user_id"] == "r1", (code, body)
        code, body = await get(server, "/active-users")
        assert code == 200 and "s0" in body["online"], (code, body)
        # A user connecting now gets what was stored for them before.
        off = await open_ws(server, off_token, Receiver)
        clients.append(off)
        rx["off"] = off
        await wait_for(
            lambda: sum(1 for f in off.received if f.get("from") == "s0") == 5,
            "the stored messages delivered during the fault",
            timeout=OUTAGE_TIMEOUT,
        )
        code, text = await get(server, "/metrics")
        assert code == 200 and writable_gauge(text) == 0.0, text

        await deferToThread(fault.fix)
        fixed_at = {s.ident.user_id: s.seq for s in streamers}
        await wait_for(
            lambda: all(received_from(u, n) for u, n in fixed_at.items()),
            "messages sent after the fault delivered",
            timeout=OUTAGE_TIMEOUT,
            interval=0.1,
        )
        assert await register_and_login(server, late)
        code, text = await get(server, "/metrics")
        assert code == 200 and writable_gauge(text) == 1.0, text
        for s in streamers:
            await s.stop()

        settled = outage_settled(
            lambda: daemon.database.messages(read_only=True), traffic, tx, rx
        )
        try:
            await wait_for(settled, "the backlog of the fault", OUTAGE_TIMEOUT, 0.2)
        except AssertionError:
            pass  # the checks below say what is missing
        assert daemon.proc.poll() is None, daemon.log_tail()

        rows = daemon.database.messages()
        check_nothing_lost(rows, traffic, tx, rx)

        # One warning naming the cause, one line for the recovery.
        log = daemon.log_text()
        warnings = [line for line in log.splitlines() if OUTAGE_WARNING in line]
        assert len(warnings) == 1, warnings
        assert f"({fault.cause})" in warnings[0], warnings
        recoveries = [line for line in log.splitlines() if RECOVERY_INFO in line]
        assert len(recoveries) == 1, recoveries

        assert await daemon.stop() is not None, daemon.log_tail()
        assert daemon.database.integrity_problems() == []
        print(
            {
                "sent": len(traffic.sent),
                "stored": len(rows),
                "refused": sum(refusals(c) for c in tx.values()),
            }
        )
    finally:
        for s in streamers:
            s.running = False
        for client in clients:
            if client.protocol is not None and not client.closed:
                client.abort()
        daemon.kill_now()


@pytest.mark.parametrize("kind", [DiskFull, ReadOnly, Locked], ids=lambda k: k.__name__)
@pytest_twisted.ensureDeferred
async def test_sqlite_unwritable_refuses_keeps_reading_and_recovers(tmp_path, kind):
    fault = kind(tmp_path)
    try:
        await outage(Daemon(tmp_path, fault.db), fault)
    finally:
        await deferToThread(fault.close)


@pytest.fixture
def pg_role(own_postgres):
    """A migrated database on the test's own server, and a non-superuser
    role with just the rights dkserver needs (a superuser ignores REVOKE):
    (URL for the daemon as that role, an admin connection to the server,
    an admin connection to the database, the role)."""
    pg = own_postgres.server
    name = pg.create_database(migrated=True)
    role, password = "dk_app", uuid.uuid4().hex
    admin = pg.connect(autocommit=True)
    admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    db_admin = pg.connect(name, autocommit=True)
    db_admin.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
    )
    db_admin.execute(
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}"
    )
    as_role = dataclasses.replace(pg, user=role, password=password)
    try:
        yield as_role.url(name), admin, db_admin, role
    finally:
        db_admin.close()
        admin.close()


@pytest.mark.parametrize("kind", ["read-only", "revoked", "disk-full"])
@pytest_twisted.ensureDeferred
async def test_postgres_unwritable_refuses_keeps_reading_and_recovers(
    tmp_path, own_postgres, pg_role, kind
):
    url, admin, db_admin, role = pg_role
    if kind == "read-only":
        fault = PgReadOnly(admin)
    elif kind == "revoked":
        fault = PgRevoked(db_admin, role)
    else:
        fault = PgDiskFull(own_postgres, admin, db_admin)
    try:
        await outage(Daemon(tmp_path, url), fault)
    finally:
        await deferToThread(
            admin.execute, "ALTER SYSTEM RESET default_transaction_read_only"
        )
        await deferToThread(admin.execute, "SELECT pg_reload_conf()")
        if kind == "disk-full":
            await deferToThread(fault.close)


@pytest.mark.parametrize("kind", [DiskFull, ReadOnly], ids=lambda k: k.__name__)
@pytest_twisted.ensureDeferred
async def test_sqlite_unwritable_at_startup_refuses_in_one_line(tmp_path, kind):
    """Started on a full disk or a read-only file, dkserver does not serve
    reads it cannot keep up (SQLite needs its -shm file): it exits with one
    line naming the cause, and starts once the cause is gone."""
    fault = kind(tmp_path)
    daemon = Daemon(tmp_path, fault.db)
    try:
        server = await daemon.start(timeout=60)
        assert await register_and_login(server, Identity("alice"))
        assert await daemon.stop() is not None, daemon.log_tail()
        if kind is ReadOnly:
            fault.files = [f for f in fault.files if f.exists()]
        await deferToThread(fault.break_it)
        with pytest.raises(AssertionError, match="twistd exited"):
            await daemon.start(timeout=60)
        last = daemon.log_text().strip().splitlines()[-1]
        assert last.startswith("dkserver: DK_DB: ") and fault.at_startup in last, last
        assert "Traceback" not in daemon.log_text()
        await deferToThread(fault.fix)
        server = await daemon.start(timeout=60)
        code, body = await get(server, "/auth/users/alice")
        assert code == 200 and body["user_id"] == "alice", (code, body)
        assert await daemon.stop() is not None, daemon.log_tail()
    finally:
        daemon.kill_now()
        await deferToThread(fault.close)


@pytest_twisted.ensureDeferred
async def test_sqlite_shutdown_during_a_full_disk_exits_without_a_traceback(tmp_path):
    """SIGTERM while writes fail: dkserver still stops in time, logs what
    it could not write, and starts on the same file once there is room."""
    fault = DiskFull(tmp_path)
    daemon = Daemon(tmp_path, fault.db)
    clients = []
    try:
        server = await daemon.start(timeout=60)
        senders, receivers = [Identity("s0")], [Identity("r0")]
        _, rx, tx = await open_clients(server, senders, receivers)
        clients += [*rx.values(), *tx.values()]
        tx["s0"].send_json(signed_frame(senders[0], "r0", "before"))
        await wait_for(lambda: rx["r0"].received, "a message delivered", 20)
        await deferToThread(fault.break_it)
        for n in range(3):
            tx["s0"].send_json(signed_frame(senders[0], "r0", f"refused-{n}"))
        await wait_for(lambda: refusals(tx["s0"]) == 3, "the refusals", 20)
        assert await daemon.stop(timeout=30) is not None, daemon.log_tail()
        log = daemon.log_text()
        assert "Traceback" not in log, daemon.log_tail()
        assert "shutdown complete" in log.rsplit("===== run", 1)[-1], log[-3000:]
        await deferToThread(fault.fix)
        server = await daemon.start(timeout=60)
        code, body = await get(server, "/auth/users/r0")
        assert code == 200, (code, body)
        rows = daemon.database.messages(read_only=True)
        assert [row[2] for row in rows.values()] == ["before"]
        assert await daemon.stop() is not None, daemon.log_tail()
        assert daemon.database.integrity_problems() == []
    finally:
        for client in clients:
            if client.protocol is not None and not client.closed:
                client.abort()
        daemon.kill_now()
        await deferToThread(fault.close)
