"""Running ``port-db`` from a test, and reading both sides of a port."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

from dkserver.admin import port_db
from dkserver.admin.tables import TABLES
from dkserver.store import schema
from tests.support.paths import FIXTURES

COMMAND = [sys.executable, "-m", "dkserver.admin.port_db"]


@dataclass
class Result:
    rc: int
    out: str
    err: str


def run_port(capsys, *args: str) -> Result:
    """``port-db`` in this process (fast; the served check sees other
    processes only, so tests of it use :func:`run_port_process`)."""
    capsys.readouterr()
    try:
        rc = port_db.main(list(args))
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    captured = capsys.readouterr()
    return Result(rc, captured.out, captured.err)


def run_port_process(*args: str, timeout: float = 300) -> Result:
    done = subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout
    )
    return Result(done.returncode, done.stdout, done.stderr)


def copy_fixture(tmp_path: Path) -> Path:
    """The original server's database (and any -wal/-shm), copied to tmp."""
    for src in FIXTURES.glob("original-server.db*"):
        shutil.copy(src, tmp_path / src.name.replace("original-server", "dk"))
    return tmp_path / "dk.db"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def migrated_copy(path: Path, tmp_path: Path):
    """What dkserver would make of ``path``: a copy, migrated."""
    copy = tmp_path / f"expected-{path.name}"
    shutil.copy(path, copy)
    conn = sqlite3.connect(copy)
    try:
        schema.migrate_connection(conn)
        yield conn
    finally:
        conn.close()


def pg_columns(pg: psycopg.Connection, table: str) -> list[str]:
    rows = pg.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s"
        " ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [name for (name,) in rows]


def table_key(table: str) -> tuple[str, ...]:
    return next(t.key for t in TABLES if t.name == table)


def sqlite_rows(conn: sqlite3.Connection, table: str, columns: list[str]) -> list:
    order = ", ".join(table_key(table))
    query = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"
    return [tuple(r) for r in conn.execute(query)]


def pg_rows(pg: psycopg.Connection, table: str, columns: list[str]) -> list:
    order = ", ".join(table_key(table))
    query = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"
    return [tuple(r) for r in pg.execute(query)]


def pg_count(url: str, table: str) -> int:
    with psycopg.connect(url, connect_timeout=10) as pg:
        return pg.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
