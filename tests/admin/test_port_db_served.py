"""``port-db`` refuses a database that a running dkserver is serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.admin.portdb import copy_fixture, run_port_process
from tests.support.server import make_config, start_server, stop_server


@pytest_twisted.ensureDeferred
async def test_refuses_a_database_dkserver_is_serving(tmp_path, pg_empty_url):
    db = copy_fixture(tmp_path)
    server = await start_server(make_config(tmp_path, db_path=str(db)))
    try:
        refused = await deferToThread(run_port_process, str(db), pg_empty_url)
    finally:
        await stop_server(server)

    assert refused.rc == 2
    assert refused.out == ""
    assert refused.err.strip().splitlines() == [
        f"port-db: {db} is open in process {os.getpid()} (a dkserver serving "
        "it?); stop that process first, port-db copies only a database nobody "
        "writes"
    ]
    with psycopg.connect(pg_empty_url) as pg:  # PostgreSQL was not touched
        assert pg.execute("SELECT to_regclass('users')").fetchone() == (None,)

    # once the server is stopped, the same command goes through
    after = await deferToThread(run_port_process, str(db), pg_empty_url)
    assert after.rc == 0, after.err
    assert "messages: 3 rows to copy, 0 already in PostgreSQL, 3 copied" in after.out


def test_database_left_by_a_killed_server_is_ported_with_its_wal(
    tmp_path, pg_empty_url
):
    """No process holds it any more, so it is not served; the rows only in
    the -wal file (not yet checkpointed) must come along."""
    db = copy_fixture(tmp_path)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(db)!r})\n"
            "c.execute('PRAGMA journal_mode=WAL')\n"
            "c.execute(\"INSERT INTO user_descriptions VALUES ('bob', 'in wal')\")\n"
            "c.commit()\n"
            "print('written', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline() == "written\n"
        held = run_port_process(str(db), pg_empty_url)
        assert held.rc == 2
        assert f"is open in process {writer.pid}" in held.err
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate()
    assert (tmp_path / "dk.db-wal").stat().st_size > 0

    result = run_port_process(str(db), pg_empty_url)

    assert result.rc == 0, result.err
    assert "user_descriptions: 2 rows to copy, 0 already in PostgreSQL, 2 copied" in (
        result.out
    )
    with psycopg.connect(pg_empty_url) as pg:
        row = pg.execute(
            "SELECT descriptions FROM user_descriptions WHERE user_id = 'bob'"
        )
        assert row.fetchone() == ("in wal",)
