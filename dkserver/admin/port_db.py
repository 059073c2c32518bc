"""``dkserver port-db SQLITE_PATH POSTGRES_URL``: move a database to PostgreSQL.

Copies a dkserver database, or one the original Go server wrote, into a
PostgreSQL database (empty, or holding an earlier, interrupted run's copy of
the same source), then verifies it.  Steps, each printed:

1. refuse a file another process has open (a dkserver serving it);
2. snapshot the file read-only and migrate the snapshot (``sqlite_source``);
3. create or check the PostgreSQL schema (``pg_schema``), refuse other data;
4. copy every table in key order, resuming after what is there (``porting``);
5. move the id sequences past the copied ids; compare both sides.

Exit status: 0 copied and verified; 1 the copy stopped or the verification
found a difference; 2 nothing was done (bad arguments, an unusable file or
database, a served file, a target holding other data).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sqlite3
import sys
import threading
from pathlib import Path

import psycopg

from dkserver.store import pg_schema
from dkserver.store.errors import DatabaseUnusable
from dkserver.store.url import DatabaseUrl, DatabaseUrlError, parse_database_url

from . import context, sqlite_source
from .errors import AdminError, CopyFailed
from .porting import Port

NAME = "port-db"

#: Rows per COPY transaction: bounds memory (one chunk is held at a time)
#: and the work a killed run loses.
DEFAULT_CHUNK_SIZE = 1000

#: Seconds to wait for PostgreSQL when the URL sets no connect_timeout.
CONNECT_TIMEOUT = 10

_DESCRIPTION = (
    "Copy a dkserver (or original DistributedKnowledge server) SQLite database "
    "into PostgreSQL: all tables, ids kept, timestamps byte for byte, then "
    "verify counts and checksums. Safe to run again: an interrupted run "
    "resumes, a finished one copies nothing twice. Stop the server first."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``port-db`` to the ``dkserver`` command's subcommands."""
    parser = subparsers.add_parser(
        NAME,
        help="copy a SQLite database into PostgreSQL",
        description=_DESCRIPTION,
    )
    configure(parser)
    parser.set_defaults(run=run)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sqlite_path",
        metavar="SQLITE_PATH",
        help="the SQLite file (a path or sqlite:///path); opened read-only",
    )
    parser.add_argument(
        "postgres_url",
        metavar="POSTGRES_URL",
        help="postgresql://user[:password]@host[:port]/dbname (empty, or "
        "holding an interrupted port of the same file)",
    )
    parser.add_argument(
        "--chunk-size",
        type=context.whole_number(),
        default=DEFAULT_CHUNK_SIZE,
        metavar="ROWS",
        help=f"rows per transaction (default {DEFAULT_CHUNK_SIZE})",
    )
    parser.add_argument(
        "--work-dir",
        metavar="DIR",
        default=None,
        help="where the temporary migrated copy of the file goes (it needs "
        "the file's size; default: the system temporary directory)",
    )
    parser.add_argument(
        "--verify-only",
        action="store_true",
        help="copy nothing; only compare the file with PostgreSQL",
    )


#: The psycopg loggers that warn "error ignored in rollback".
_PSYCOPG_LOGGERS = ("psycopg", "psycopg.transaction")


def _ignored_rollback(record: logging.LogRecord) -> bool:
    """psycopg's warning that rolling back an interrupted query failed: the
    connection is closed next, which rolls back anyway; not the operator's
    concern, and it would break the one-line report."""
    return not record.getMessage().startswith("error ignored in rollback")


def quiet_rollback_warnings() -> None:
    """Filters apply only to records of their own logger, not its children:
    psycopg warns from "psycopg" (a connection) and "psycopg.transaction"."""
    for name in _PSYCOPG_LOGGERS:
        logger = logging.getLogger(name)
        if _ignored_rollback not in logger.filters:
            logger.addFilter(_ignored_rollback)


def run(args: argparse.Namespace) -> int:
    """Run the port; prints progress to stdout, a failure as one stderr line."""
    quiet_rollback_warnings()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so the temporary copy is removed
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _port(args)
    except AdminError as e:
        print(f"{NAME}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{NAME}: interrupted; run it again to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _out(line: str) -> None:
    print(line, flush=True)


def _port(args: argparse.Namespace) -> None:
    path = _sqlite_path(args.sqlite_path)
    url = _postgres_url(args.postgres_url)
    sqlite_source.check_source(path)
    sqlite_source.check_not_served(path)
    sqlite_source.inspect(path)
    # connect first: an unreachable server fails before a long snapshot
    with _connect(url) as target, sqlite_source.snapshot(path, args.work_dir) as snap:
        # the server may have started while the snapshot was taken
        sqlite_source.check_not_served(path)
        _out(
            f"source {path}: schema version {snap.found_version}, migrated to "
            f"{pg_schema.LATEST_VERSION} in a temporary copy (the file is unchanged)"
        )
        _migrate_target(target, url)
        try:
            port = Port(
                snap.conn,
                target,
                chunk_size=args.chunk_size,
                out=_out,
                source_sequences=snap.sequences,
            )
            if not args.verify_only:
                resume = port.check_target()
                port.copy_all(resume)
                port.reset_sequences()
            port.verify()
        except psycopg.Error as e:
            raise CopyFailed(_pg_failure(url, e)) from e
        except sqlite3.Error as e:
            raise CopyFailed(f"reading the copy of {path} failed: {e}") from e
    _out(f"{NAME}: {url.redacted} holds a verified copy of {path}")


def _sqlite_path(text: str) -> Path:
    try:
        parsed = parse_database_url(text)
    except DatabaseUrlError as e:
        raise AdminError(f"SQLITE_PATH {e}") from e
    if parsed.kind != "sqlite":
        raise AdminError("SQLITE_PATH must be a SQLite file, not a postgresql:// URL")
    assert parsed.path is not None
    if parsed.path == ":memory:" or parsed.path.startswith("file:"):
        raise AdminError("SQLITE_PATH must be the path of a file")
    return Path(parsed.path)


def _postgres_url(text: str) -> DatabaseUrl:
    try:
        parsed = parse_database_url(text)
    except DatabaseUrlError as e:
        raise AdminError(f"POSTGRES_URL {e}") from e
    if not parsed.is_postgresql:
        raise AdminError(
            "POSTGRES_URL must be a postgresql://user@host:port/dbname URL"
        )
    return parsed


def _connect(url: DatabaseUrl) -> psycopg.Connection:
    conninfo = url.conninfo
    if not any(key == "connect_timeout" for key, _ in url.options):
        conninfo += f" connect_timeout={CONNECT_TIMEOUT}"
    try:
        return psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as e:
        raise AdminError(_pg_failure(url, e)) from e


def _migrate_target(conn: psycopg.Connection, url: DatabaseUrl) -> None:
    try:
        pg_schema.migrate_connection(conn)
    except DatabaseUnusable as e:
        raise AdminError(f"POSTGRES_URL {url.redacted}: {e}") from e
    except psycopg.Error as e:
        raise AdminError(_pg_failure(url, e)) from e


def _pg_failure(url: DatabaseUrl, e: psycopg.Error) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"PostgreSQL at {url.redacted}: {text}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dkserver.admin.port_db", description=_DESCRIPTION
    )
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
