"""``dkserver backup PATH``: a consistent copy of the database, taken while
the server runs, verified before it is called done.

SQLite: SQLite's online backup API in steps (``Connection.backup(pages=N,
sleep=S)``) inside one read transaction held on the source connection.
In WAL mode a reader never blocks the server's writer, and holding the
transaction pins one snapshot for every step: without it, each commit of
the server restarts the copy from the first page, and a busy server's copy
never ends (bench/admin_backup.py measured 1,271 restarts in 5,000 steps
at 200 commits/s).  The rows of every table are counted in that same
snapshot; the copy is fsynced, converted to a self-contained file
(``journal_mode=DELETE``: no -wal beside it), checked with ``PRAGMA
integrity_check`` and its counts compared, and only then renamed to PATH.
``VACUUM INTO`` stalled the writer no less in the same measurement
(docs/operating/admin-cli.md) but cannot run inside a transaction, so its
copy could not be compared with a snapshot, and it cannot be throttled.

PostgreSQL: ``pg_dump --format=custom`` (from PATH, or ``--pg-dump``) of
a snapshot this command exported from a repeatable-read transaction, in
which it also counted every table's rows; the dump's rows, read back with
``pg_restore``, must match.  pg_dump takes no lock that blocks the server's
reads or writes (it holds ACCESS SHARE, which only DDL waits for).

The copy is written to a temporary file beside PATH and renamed at the end,
so PATH is either the old file (``--force``) or a complete, verified copy.
Exit status: 0 written and verified; 2 nothing done (PATH exists without
``--force``, a directory, the database itself, no pg_dump); 1 the copy
failed or did not verify (the temporary file is removed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import context
from .errors import AdminError, OperationFailed, VerificationFailed

NAME = "backup"

#: Pages per backup step (of 4 KiB by default: 4 MiB a step) and the pause
#: between steps, in which the server's writer has the disk to itself.
#: bench/admin_backup.py: docs/operating/admin-cli.md.
DEFAULT_PAGES = 1024
DEFAULT_SLEEP = 0.02

#: How long pg_dump and pg_restore may run before the backup is given up.
PG_DUMP_TIMEOUT = 24 * 3600


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``backup`` to the ``dkserver`` command."""
    parser = subparsers.add_parser(
        NAME,
        help="a consistent, verified copy of the database while the server runs",
        description="Copy the database to PATH while the server runs, without "
        "stalling it: SQLite with the online backup API in steps on one "
        "snapshot, PostgreSQL with pg_dump --format=custom. The copy is "
        "verified (integrity check, the row count of every table) before it "
        "is renamed to PATH.",
    )
    parser.add_argument("path", metavar="PATH", help="where the copy goes")
    parser.add_argument(
        "--force", action="store_true", help="replace PATH if it exists"
    )
    parser.add_argument(
        "--pages",
        type=context.whole_number(),
        default=DEFAULT_PAGES,
        metavar="N",
        help=f"SQLite: pages copied per step (default {DEFAULT_PAGES})",
    )
    parser.add_argument(
        "--sleep",
        type=_seconds,
        default=DEFAULT_SLEEP,
        metavar="SECONDS",
        help=f"SQLite: pause between steps (default {DEFAULT_SLEEP})",
    )
    parser.add_argument(
        "--pg-dump",
        default="pg_dump",
        metavar="PROGRAM",
        help="PostgreSQL: the pg_dump to run (default: pg_dump on PATH; "
        "pg_restore is looked for beside it); its major version must be the "
        "server's or newer",
    )
    context.add_common_options(parser)
    parser.set_defaults(run=context.command(NAME, run))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError(f"must be from 0 to 60, got {text}")
    return value


def run(args: argparse.Namespace) -> None:
    target = Path(args.path)
    config = context.database_config(args)
    _check_target(target, args.force, config.database)
    with _sigterm_interrupts(), context.open_database(args) as db:
        start = time.monotonic()
        if db.is_postgresql:
            report = _pg_backup(db, target, args)
        else:
            report = _sqlite_backup(db, target, args)
    report["seconds"] = round(time.monotonic() - start, 3)
    rows = sum(report["tables"].values())
    context.emit(
        args,
        report,
        [
            f"backup of {report['source']} written to {target}: "
            f"{report['bytes']:,} bytes, {rows:,} rows in "
            f"{len(report['tables'])} tables, verified ({report['check']}), "
            f"in {report['seconds']:.1f} s",
        ],
    )


def _check_target(target: Path, force: bool, database: Any) -> None:
    if target.is_dir():
        raise AdminError(f"PATH {target} is a directory; name the file to write")
    if not target.parent.is_dir():
        raise AdminError(f"PATH {target}: directory {target.parent} does not exist")
    if not database.is_postgresql:
        source = Path(str(database.path))
        for suffix in ("", "-wal", "-shm", "-journal"):
            twin = Path(f"{source}{suffix}")
            if twin.exists() and target.exists() and target.samefile(twin):
                raise AdminError(f"PATH {target} is the database itself")
    if target.exists() and not force:
        raise AdminError(f"PATH {target} exists; pass --force to replace it")


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the temporary copy is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _partial(target: Path) -> Iterator[Path]:
    """A temporary file beside ``target``; removed unless renamed into place."""
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".partial", dir=target.parent
        )
    except OSError as e:
        raise AdminError(
            f"PATH {target}: cannot write in {target.parent}: {e.strerror}"
        ) from e
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
    finally:
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{partial}{suffix}").unlink(missing_ok=True)


def _install(partial: Path, target: Path) -> None:
    """Rename the finished copy to ``target`` and make the rename durable."""
    try:
        _fsync(partial)
        os.replace(partial, target)
        _fsync(target.parent)
    except OSError as e:
        raise OperationFailed(f"writing {target} failed: {e.strerror or e}") from e


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- SQLite -------------------------------------------------------------------


def _sqlite_backup(
    db: context.AdminDatabase, target: Path, args: argparse.Namespace
) -> dict:
    source = db.connection
    with _partial(target) as partial:
        try:
            source.execute("BEGIN")  # one snapshot: the counts and every step
            try:
                expected = _sqlite_counts(source)
                copy = sqlite3.connect(partial)
                try:
                    source.backup(copy, pages=args.pages, sleep=args.sleep)
                finally:
                    copy.close()
            finally:
                source.rollback()
        except sqlite3.Error as e:
            raise OperationFailed(f"copying to {target} failed: {context.one_line(e)}")
        check = _verify_sqlite_copy(partial, expected)
        _install(partial, target)
    return {
        "backend": "sqlite",
        "source": str(db.url.path),
        "path": str(target),
        "bytes": target.stat().st_size,
        "tables": expected,
        "check": check,
    }


def _sqlite_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return {
        name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
        for name in names
    }


def _verify_sqlite_copy(path: Path, expected: dict[str, int]) -> str:
    conn = sqlite3.connect(path)
    try:
        # a file of its own: the server's restore opens it in WAL mode again
        conn.execute("PRAGMA journal_mode=DELETE").fetchone()
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise VerificationFailed(
                f"the copy fails integrity_check: {'; '.join(problems[:3])}"
            )
        found = _sqlite_counts(conn)
    except sqlite3.Error as e:
        raise OperationFailed(f"checking the copy failed: {context.one_line(e)}")
    finally:
        conn.close()
    _compare(expected, found)
    return "integrity_check ok, row counts match"


def _compare(expected: dict[str, int], found: dict[str, int]) -> None:
    differ = [
        f"{name}: {expected.get(name)} in the database, {found.get(name)} in the copy"
        for name in sorted(set(expected) | set(found))
        if expected.get(name) != found.get(name)
    ]
    if differ:
        raise VerificationFailed(f"the copy differs: {'; '.join(differ[:3])}")


# --- PostgreSQL ---------------------------------------------------------------


def _pg_backup(
    db: context.AdminDatabase, target: Path, args: argparse.Namespace
) -> dict:
    pg_dump = shutil.which(args.pg_dump)
    if pg_dump is None:
        raise AdminError(
            f"{args.pg_dump} not found: install the PostgreSQL client programs "
            "(the server's major version or newer) or name one with --pg-dump; "
            "by hand: pg_dump --format=custom --file=PATH DATABASE-URL "
            "(docs/operating/admin-cli.md)"
        )
    pg_restore = str(Path(pg_dump).with_name("pg_restore"))
    if not os.access(pg_restore, os.X_OK):
        found = shutil.which("pg_restore")
        if found is None:
            raise AdminError(f"no pg_restore beside {pg_dump} or on PATH")
        pg_restore = found
    conn = db.connection
    settings = conninfo_to_dict(db.url.conninfo)
    password = settings.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password  # not on a command line others can read
    with _partial(target) as partial:
        try:
            conn.rollback()
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = 0")  # counts of big tables
                snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
                expected = _pg_counts(conn)
                _run(
                    [
                        pg_dump,
                        "--format=custom",
                        f"--snapshot={snapshot}",
                        "--no-password",
                        f"--file={partial}",
                        f"--dbname={make_conninfo(**settings)}",
                    ],
                    env,
                    "pg_dump",
                )
        except psycopg.Error as e:
            raise OperationFailed(
                f"PostgreSQL at {db.url.redacted}: {context.one_line(e)}"
            ) from e
        found = _dump_counts(pg_restore, partial, set(expected), env)
        _compare(expected, found)
        _install(partial, target)
    return {
        "backend": "postgresql",
        "source": db.url.redacted,
        "path": str(target),
        "bytes": target.stat().st_size,
        "tables": expected,
        "check": "pg_restore reads it, row counts match",
        "format": "pg_dump custom (restore with pg_restore)",
    }


def _pg_counts(conn: Any) -> dict[str, int]:
    names = [
        name
        for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " ORDER BY tablename"
        )
    ]
    return {
        name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
        for name in names
    }


def _run(command: list[str], env: dict[str, str], what: str) -> str:
    try:
        done = subprocess.run(  # noqa: S603 (argv list: the operator's pg_dump)
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=PG_DUMP_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OperationFailed(f"{what} did not run: {context.one_line(e)}") from e
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {done.returncode}"
        raise OperationFailed(f"{what} failed: {last.strip()}")
    return done.stdout


_COPY = re.compile(r'^COPY (?:[\w"]+\.)?"?(\w+)"? \(')


def _dump_counts(
    pg_restore: str, dump: Path, tables: set[str], env: dict[str, str]
) -> dict[str, int]:
    """Rows per table in the dump: pg_restore writes each table's data as a
    ``COPY … FROM stdin`` block, one line per row (newlines in values are
    escaped), ended by ``\\.``; read as it streams, never held whole."""
    command = [pg_restore, "--data-only", "--file=-", str(dump)]
    counts = dict.fromkeys(tables, 0)
    try:
        proc = subprocess.Popen(  # noqa: S603 (argv list: pg_restore)
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except OSError as e:
        raise OperationFailed(f"pg_restore did not run: {context.one_line(e)}") from e
    with proc:
        current: str | None = None
        for line in proc.stdout:
            if current is None:
                m = _COPY.match(line)
                if m:
                    current = m.group(1)
                    counts.setdefault(current, 0)
            elif line == "\\.\n":
                current = None
            else:
                counts[current] += 1
        errors = proc.stderr.read()
    if proc.returncode != 0:
        lines = [line for line in errors.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise VerificationFailed(f"pg_restore cannot read the dump: {last.strip()}")
    return counts
