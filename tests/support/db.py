"""Reading a server's database from a test (separate connection, either backend)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from dkserver.store.engine import PostgresEngine


def db_rows(server, sql: str, *params) -> list[tuple]:
    """Rows of ``sql`` (``?`` placeholders) on ``server``'s database: a SQLite
    file opened read-only, or the PostgreSQL database it runs on."""
    database = server.config.database
    if database.is_postgresql:
        with psycopg.connect(database.conninfo) as conn:
            cur = conn.execute(PostgresEngine().sql(sql), params)
            return cur.fetchall() if cur.description is not None else []
    uri = Path(server.config.db_path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
