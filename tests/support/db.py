"""Reading a server's database from a test (separate connection, either backend)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from dkserver.store.engine import PostgresEngine, encode_content

_ENGINE = PostgresEngine()


@contextmanager
def recorded_interactions(database) -> Iterator[list[str]]:
    """The names of the transactions run through ``database`` (a store's
    `Database`) while the block runs, in order; they still run."""
    names: list[str] = []
    real = database.runInteraction

    def recording(func, *args, **kwargs):
        names.append(func.__name__)
        return real(func, *args, **kwargs)

    database.runInteraction = recording
    try:
        yield names
    finally:
        del database.runInteraction


#: Open autocommit connections by conninfo, newest last: tests poll db_rows
#: in loops, and a PostgreSQL connection costs a server process and a SCRAM
#: exchange, far more than opening a SQLite file.
_PG_CONNECTIONS: dict[str, psycopg.Connection] = {}
_PG_KEEP = 4


def _pg_connection(conninfo: str) -> psycopg.Connection:
    conn = _PG_CONNECTIONS.pop(conninfo, None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    _PG_CONNECTIONS[conninfo] = conn
    while len(_PG_CONNECTIONS) > _PG_KEEP:  # the databases of finished tests
        _PG_CONNECTIONS.pop(next(iter(_PG_CONNECTIONS))).close()
    return conn


def db_rows(server, sql: str, *params) -> list[tuple]:
    """Rows of ``sql`` (``?`` placeholders) on the database of ``server`` (a
    running server or its config, stopped or not): a SQLite file opened
    read-only, or the PostgreSQL database it runs on."""
    config = getattr(server, "config", server)
    database = config.database
    if database.is_postgresql:
        cur = _pg_connection(database.conninfo).execute(_ENGINE.sql(sql), params)
        return cur.fetchall() if cur.description is not None else []
    uri = Path(config.db_path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def as_stored(server, content: str) -> str:
    """Message ``content`` as ``server``'s backend stores it: as sent, or on
    PostgreSQL escaped where it holds U+0000 (``engine.encode_content``)."""
    if getattr(server, "config", server).database.is_postgresql:
        return encode_content(content)
    return content


def assert_database_intact(server) -> None:
    """SQLite: the file passes ``integrity_check`` and ``foreign_key_check``.

    PostgreSQL has neither pragma and needs neither: it enforces the foreign
    keys on every write, and a damaged page fails the queries that read it.
    """
    if getattr(server, "config", server).database.is_postgresql:
        return
    assert db_rows(server, "PRAGMA integrity_check") == [("ok",)]
    assert db_rows(server, "PRAGMA foreign_key_check") == []
