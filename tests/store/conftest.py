"""Fixtures for the storage tests: real SQLite files in ``tmp_path``."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from dkserver.store import Store
from tests.support.paths import FIXTURES


@pytest.fixture
def db_path(tmp_path: Path) -> str:
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
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(statement, params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    return run
