"""What the files of a SQLite database say about a write that failed.

SQLite names a full disk itself (SQLITE_FULL) only for its own writes to
the database and the WAL; EROFS (a read-only mount), EPERM (an immutable
file), a failure to grow or create the ``-shm`` file reach Python as a bare
"disk I/O error" or "unable to open database file", without the errno.
The files tell the rest: blocking calls, for the pool's thread and startup.
"""

from __future__ import annotations

import os

from dkserver.store import errors

#: Below this much free space (bytes) a write error on SQLite is put down to
#: a full disk: SQLite says SQLITE_FULL for ENOSPC on its own writes, but a
#: failure to grow the ``-shm`` file or to create a file is an I/O error.
LOW_SPACE = 256 * 1024


def diagnose_sqlite_files(path: str) -> tuple[str, str] | None:
    """(cause, detail) when the files of the database at ``path`` explain a
    failed write: one that cannot be written (a read-only mount, an
    immutable file, permissions), or no space left beside them."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    db = os.path.abspath(path)
    directory = os.path.dirname(db)
    try:
        for name in (db, db + "-wal", db + "-shm"):
            if os.path.exists(name) and not os.access(name, os.R_OK | os.W_OK):
                return errors.READ_ONLY, f"{name} is not writable"
        if not os.access(directory, os.W_OK | os.X_OK):
            return errors.READ_ONLY, f"directory {directory} is not writable"
        st = os.statvfs(directory)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free < LOW_SPACE:
        return errors.DISK_FULL, f"{free} bytes free in {directory}"
    return None
