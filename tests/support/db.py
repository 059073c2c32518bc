"""Reading a server's database from a test (separate connection, either backend)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from dkserver.store.engine import PostgresEngine, encode_content


def db_rows(server, sql: str, *params) -> list[tuple]:
    """Rows of ``sql`` (``?`` placeholders) on the database of ``server`` (a
    running server or its config, stopped or not): a SQLite file opened
    read-only, or the PostgreSQL database it runs on."""
    config = getattr(server, "config", server)
    database = config.database
    if database.is_postgresql:
        with psycopg.connect(database.conninfo) as conn:
            cur = conn.execute(PostgresEngine().sql(sql), params)
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
