"""Reading a server's SQLite file from a test (separate, read-only)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def db_rows(server, sql: str, *params) -> list[tuple]:
    """Rows of ``sql`` on ``server``'s database, opened read-only."""
    uri = Path(server.config.db_path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
