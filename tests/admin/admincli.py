"""Running the real ``dkserver`` admin commands from a test, and giving them
a database to work on (either backend)."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dkserver.admin import context
from dkserver.store import schema
from dkserver.store.messages import NewMessage

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "dkserver.cli"]

#: Settings the developer's shell might hold that would change what a
#: command finds.
_SETTINGS_PREFIXES = ("DK_", "MESSAGE_", "LOGIN_")
_SETTINGS = ("SERVER_ADDR", "HTTP_ADDR", "JWT_SECRET")


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.rc == 0, self
        return json.loads(self.out)

    def one_error_line(self, prefix: str) -> str:
        """The single stderr line of a refused command (no traceback)."""
        assert "Traceback" not in self.err, self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith(prefix), lines[0]
        return lines[0]


def command_env(**env: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SETTINGS_PREFIXES) and k not in _SETTINGS
    }
    base["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    return {**base, **env}


def dkserver(*args: str, cwd: Path | None = None, timeout: float = 120, **env: str):
    """``python -m dkserver.cli ARGS`` in a subprocess (the real entry point)."""
    done = subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=command_env(**env),
    )
    return Result(done.returncode, done.stdout, done.stderr)


def sqlite_database(path: Path) -> str:
    """A new SQLite file at the current schema, as the server leaves it."""
    conn = sqlite3.connect(path)
    try:
        schema.migrate_connection(conn)
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    return str(path)


def target_database(backend: str, tmp_path: Path, request) -> str:
    """The ``--db`` of a fresh, migrated database on ``backend``."""
    if backend == "postgresql":
        return request.getfixturevalue("pg_url")
    return sqlite_database(tmp_path / "dk.db")


def seed(db: str, users: list[tuple[str, str, str]], **more: Any) -> None:
    """Register ``(user_id, username, public_key)`` through the store's own
    code; ``pending={user: n}`` stores n direct messages to a user,
    ``sessions={user: (count, still_open)}`` records sessions."""
    with context.open_database(argparse.Namespace(db=db)) as admin:
        store = admin.store
        ns = 1_700_000_000_000_000_000
        for i, (user_id, name, key) in enumerate(users):
            admin.run(store.users.create(user_id, name, key, registered_ns=ns + i))
        for to_user, count in more.get("pending", {}).items():
            sender = users[0][0]
            admin.run(
                store.messages.add_many(
                    [
                        NewMessage(
                            sender,
                            to_user,
                            "2026-01-01T00:00:00Z",
                            f"m{i}",
                            False,
                            None,
                            False,
                            ns + i,
                        )
                        for i in range(count)
                    ]
                )
            )
        for user_id, (count, still_open) in more.get("sessions", {}).items():
            for i in range(count):
                sid = f"{user_id}-s{i}"
                admin.run(store.analytics.start_session(sid, user_id, ns + i))
                if i >= still_open:
                    admin.run(store.analytics.end_session(sid, ns + i + 10**9))
