"""The tests' private PostgreSQL: isolated, locked down, never left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from dkserver.store.url import parse_database_url
from tests.support import postgres

private_only = pytest.mark.skipif(
    bool(os.environ.get(postgres.ENV_URL)),
    reason=f"checks the private server; {postgres.ENV_URL} is set",
)


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # dead, waiting to be reaped by init


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_each_test_database_is_separate(pg_server, pg_url):
    other = pg_server.create_database()
    try:
        with pg_server.connect(other) as conn:
            conn.execute(
                "INSERT INTO users (user_id, username, public_key)"
                " VALUES ('a', 'a', 'k')"
            )
        with psycopg.connect(parse_database_url(pg_url).conninfo) as conn:
            assert conn.execute("SELECT COUNT(*) FROM users").fetchone() == (0,)
    finally:
        pg_server.drop_database(other)
    with pg_server.connect() as conn:
        names = conn.execute("SELECT datname FROM pg_database").fetchall()
    assert (other,) not in names


@private_only
def test_private_server_wants_the_password_and_listens_on_loopback_only(pg_server):
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            host=pg_server.host,
            port=pg_server.port,
            user=pg_server.user,
            password="wrong",
            dbname="postgres",
            connect_timeout=10,
        )
    with pg_server.connect() as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        data = conn.execute("SHOW data_directory").fetchone()[0]
    if os.geteuid() == 0:
        assert Path(data).stat().st_uid != 0  # initdb and postgres refuse root


_CHILD = """
import sys, time
from pathlib import Path
from tests.support.postgres import PrivateServer, find_bindir
private = PrivateServer(find_bindir())
server = private.start()
pid = (private.data / "postmaster.pid").read_text().split()[0]
print(private.dir, pid, flush=True)
time.sleep(600)
"""


@private_only
def test_server_is_stopped_when_the_test_process_is_killed(pg_server):
    """SIGKILL leaves no finalizer to run: the watchdog stops the server."""
    root = Path(__file__).resolve().parents[3]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline().split()
        assert len(line) == 2, "the child did not start a server"
        directory, pid = Path(line[0]), int(line[1])
        assert not process_gone(pid)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    wait_until(lambda: process_gone(pid), "the postmaster to exit")
    wait_until(lambda: not directory.exists(), "the data directory to be removed")


@private_only
def test_stop_removes_server_and_directory(pg_server):
    private = postgres.PrivateServer(postgres.find_bindir())
    server = private.start()
    directory = private.dir
    pid = int((private.data / "postmaster.pid").read_text().split()[0])
    with server.connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    private.stop()
    private.stop()  # twice is fine
    assert process_gone(pid)
    assert not directory.exists()


def run_pytest_without_postgres(require: bool) -> subprocess.CompletedProcess:
    """This repo's pytest on one PostgreSQL test, pointed at a port where
    nothing listens."""
    root = Path(__file__).resolve().parents[3]
    environ = {k: v for k, v in os.environ.items() if k != postgres.ENV_REQUIRE}
    if require:
        environ[postgres.ENV_REQUIRE] = "1"
    environ[postgres.ENV_URL] = "postgresql://dk:pw@127.0.0.1:1/postgres"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "tests/store/postgres/test_database_url.py::"
            "test_conninfo_connects_to_the_private_server",
        ],
        cwd=root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unavailable_postgresql_is_a_skip_named_in_the_summary():
    proc = run_pytest_without_postgres(require=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout
    assert "SKIPPED 1 PostgreSQL tests: DK_TEST_POSTGRES_URL" in proc.stdout
    assert "unreachable" in proc.stdout
    assert ":pw@" not in proc.stdout  # the password is not printed


def test_unavailable_postgresql_fails_when_required():
    proc = run_pytest_without_postgres(require=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 error" in proc.stdout
    assert "DK_TEST_REQUIRE_POSTGRES is set" in proc.stdout
