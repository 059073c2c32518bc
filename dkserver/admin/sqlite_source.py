"""The SQLite side of ``port-db``: refuse a served file, copy it, migrate the copy.

The operator's file is never written: it is opened read-only, copied with
SQLite's online backup (a consistent snapshot, WAL content included) into a
temporary directory, and the copy is brought to the current schema by the same
migrations dkserver runs at startup.  A file the original Go server wrote
therefore reaches PostgreSQL exactly as dkserver would have served it, and an
interrupted port leaves nothing behind but committed PostgreSQL rows.  The
copy costs disk (the size of the database) but no memory.

"Served" means another process has the file open through SQLite.  dkserver
keeps its pool connection open for as long as it runs and always uses WAL
mode, and every WAL connection holds an fcntl read lock on the ``-shm`` file
(its "dead man switch" byte) until it closes; a transaction in progress holds
locks on the database file itself.  ``F_GETLK`` reports such a lock, and the
pid holding it, without taking one, so the check cannot disturb the server.
It sees other processes only (POSIX locks never conflict within a process),
which is what an operator's separate ``port-db`` process needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dkserver.store import schema
from dkserver.store.errors import DatabaseUnusable, StoreError

from .errors import AdminError

#: ``struct flock`` on Linux: l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = "hhqqi"

#: Tables without which a file is neither dkserver's nor the original's.
_REQUIRED_TABLES = ("users", "messages")


@dataclass
class Snapshot:
    """A migrated private copy of the source database."""

    conn: sqlite3.Connection
    #: ``PRAGMA user_version`` of the operator's file (0: the original server).
    found_version: int
    #: ``sqlite_sequence``: the highest id each table ever handed out, which
    #: may exceed the highest id left (deleted rows); ids are never reused.
    sequences: dict[str, int]


def lock_holder(path: Path) -> int | None:
    """The pid of another process with a lock on ``path`` or its ``-shm``."""
    if not sys.platform.startswith("linux"):
        return None  # the flock layout below is Linux's
    for candidate in (Path(f"{path}-shm"), path):
        try:
            with open(candidate, "rb") as f:
                probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
                held = struct.unpack(_FLOCK, fcntl.fcntl(f, fcntl.F_GETLK, probe))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise AdminError(f"cannot check whether {candidate} is in use: {e}")
        if held[0] != fcntl.F_UNLCK:
            return held[4]
    return None


def check_not_served(path: Path) -> None:
    pid = lock_holder(path)
    if pid is not None:
        raise AdminError(
            f"{path} is open in process {pid} (a dkserver serving it?); stop "
            "that process first, port-db copies only a database nobody writes"
        )


def check_source(path: Path) -> None:
    """Fail with one line unless ``path`` is a readable regular file."""
    if not path.exists():
        raise AdminError(f"SQLITE_PATH {path} does not exist")
    if not path.is_file():
        raise AdminError(f"SQLITE_PATH {path} is not a file")
    if not os.access(path, os.R_OK):
        raise AdminError(f"SQLITE_PATH {path} is not readable")


@contextlib.contextmanager
def snapshot(path: Path, work_dir: str | None = None) -> Iterator[Snapshot]:
    """Yield a migrated copy of ``path`` in a temporary directory, then remove it."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix="dk-port-db-", dir=work_dir))
    except OSError as e:
        raise AdminError(f"cannot create a temporary directory: {e}") from e
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(tmp / "snapshot.db")
        conn.execute("PRAGMA synchronous=OFF")  # a throwaway copy: no fsyncs
        found = _copy(path, conn)
        try:
            schema.migrate_connection(conn)
        except (StoreError, sqlite3.Error) as e:
            raise AdminError(
                f"{path} cannot be brought to dkserver's schema "
                f"(tried on a copy; the file is unchanged): {e}"
            ) from e
        yield Snapshot(conn=conn, found_version=found, sequences=schema.sequences(conn))
    finally:
        if conn is not None:
            conn.close()
        shutil.rmtree(tmp, ignore_errors=True)


def inspect(path: Path) -> int:
    """Check ``path`` is a database port-db can take; returns its version.

    Cheap (no copy), so that a wrong file fails before anything else runs.
    """
    return _open_source(path, None)


def _copy(path: Path, dest: sqlite3.Connection) -> int:
    """Back ``path`` up into ``dest`` read-only; returns its schema version."""
    return _open_source(path, dest)


def _open_source(path: Path, dest: sqlite3.Connection | None) -> int:
    uri = f"{path.resolve().as_uri()}?mode=ro"
    # Reading a WAL-mode file creates its -wal and -shm files, which a
    # read-only connection cannot remove again: remove them if this made them.
    sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    made = [f for f in sidecars if not f.exists()]
    try:
        src = sqlite3.connect(uri, uri=True, timeout=5)
    except sqlite3.Error as e:
        raise AdminError(f"cannot open {path}: {e}") from e
    try:
        found = schema.version_of(src)
        tables = schema.tables(src)
        missing = [t for t in _REQUIRED_TABLES if t not in tables]
        if missing:
            raise AdminError(
                f"{path} has no {' or '.join(missing)} table: not a dkserver "
                "or DistributedKnowledge database"
            )
        schema.check_version(found)
        if dest is not None:
            src.backup(dest)
    except DatabaseUnusable as e:
        raise AdminError(f"{path}: {e}") from e
    except sqlite3.DatabaseError as e:
        raise AdminError(f"{path} is not a usable SQLite database: {e}") from e
    finally:
        src.close()
        _remove_made(made)
    return found


def _remove_made(made: list[Path]) -> None:
    wal = [f for f in made if f.name.endswith("-wal")]
    if any(f.exists() and f.stat().st_size > 0 for f in wal):
        return  # someone wrote meanwhile: their WAL content is not ours to drop
    for f in made:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
