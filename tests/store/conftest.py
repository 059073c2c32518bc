"""Fixtures for the storage tests, on each backend.

A test that asks for ``store``, ``db_path`` or ``sql`` runs twice, on a real
SQLite file in ``tmp_path`` and on a fresh database of the test run's private
PostgreSQL (``db_path`` is then its URL, and ``sql`` runs the statement there,
``?`` placeholders and all).  Tests about SQLite itself (pragmas, query plans,
the original server's file) are marked ``sqlite_only``; ``--backend`` picks
one backend for the whole run.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor

from dkserver.store import Store
from dkserver.store.engine import PostgresEngine
from tests.support.paths import FIXTURES


@pytest.fixture
def db_path(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where the test's database lives: a SQLite path or a PostgreSQL URL."""
    if backend == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "dk.db")


@pytest_twisted.async_yield_fixture
async def store(db_path: str) -> AsyncIterator[Store]:
    s = await Store.open(db_path, reactor)
    yield s
    await s.close()


@pytest.fixture
def original_db(tmp_path: Path) -> str:
    """A private copy of the Go server's database (with its WAL files, if any)."""
    dest = tmp_path / "original.db"
    for suffix in ("", "-wal", "-shm"):
        src = FIXTURES / f"original-server.db{suffix}"
        if src.exists():
            # copyfile, not copy: the fixture is read-only and the copy must not be
            shutil.copyfile(src, f"{dest}{suffix}")
    return str(dest)


@pytest.fixture
def sql() -> Callable[..., list[tuple]]:
    """Run one statement on a separate plain connection, for inspecting files."""

    def run(path: str, statement: str, params: tuple = ()) -> list[tuple]:
        if path.startswith("postgresql://"):
            return _pg_run(path, statement, params)
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(statement, params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    return run


def _pg_run(url: str, statement: str, params: tuple) -> list[tuple]:
    with psycopg.connect(url) as conn:
        cur = conn.execute(PostgresEngine().sql(statement), params)
        return cur.fetchall() if cur.description is not None else []
