"""What every admin command shares: its options, the database, output, errors.

A command module (``dkserver/admin/<name>.py``) looks like this::

    from dkserver.admin import context
    from dkserver.admin.errors import AdminError

    def add_parser(subparsers):
        users = context.command_group(subparsers, "user", "registered users")
        parser = users.add_parser("show", help="...", description="...")
        parser.add_argument("user_id", metavar="USER")
        context.add_common_options(parser)            # --db, --json
        parser.set_defaults(run=context.command("user show", show))

    def show(args) -> int | None:
        with context.open_database(args) as db:
            user = db.run(db.store.users.get(args.user_id))  # the store's code
            with db.transaction() as txn:                     # or SQL of your own
                txn.execute("SELECT ... WHERE user_id = ?", (args.user_id,))
        if user is None:
            raise AdminError(f"no user {args.user_id!r}")      # exit 2
        context.emit(args, {"user_id": ...}, [f"user_id  {...}"])

and ``dkserver/cli.py`` calls its ``add_parser``.  The API:

`add_common_options(parser)`
    ``--db`` (default ``DK_DB``, then ``dkserver.db``: the server's setting,
    parsed by the server's code) and ``--json``.
`command_group(subparsers, name, help)`
    A command with subcommands (``user``), shared by the modules that add to
    it: the first call creates it, later ones return the same group.
`command(name, body)`
    The ``run`` of a parser: calls ``body(args)`` (its return value, or 0,
    is the exit code) and turns `AdminError` (and a `StoreError` from the
    database) into one line on stderr, ``dkserver NAME: message``, and its
    exit code; Ctrl-C is exit 130.  No traceback for an expected failure.
`open_database(args)`
    A context manager giving `AdminDatabase`: one synchronous connection to
    the configured database, set up as the server's (SQLite: WAL, the busy
    timeout, foreign keys, ``DK_SQLITE_SYNCHRONOUS``; PostgreSQL: UTC, the
    statement and connect timeouts), after checking its schema is the one
    this dkserver writes.  It never creates or migrates anything.
`AdminDatabase.store`
    The server's `dkserver.store.Store` over that connection; call its
    async methods through ``db.run(coroutine)``, which runs them to the end
    at once (each ``runInteraction`` is one transaction on the connection).
`AdminDatabase.transaction()`
    A context manager yielding the store's `Txn` (``?`` placeholders on both
    backends, driver errors as `StoreError`); commits at the end, rolls back
    on an exception.
`emit(args, document, lines)` / `table(headers, rows)`
    Output: the JSON ``document`` with ``--json``, else the human ``lines``
    (`table` formats rows in aligned columns).

Why refuse a database at another schema version rather than migrate it:
an admin command may run beside a server of an older dkserver (during an
upgrade, or on another machine), as another system user (root, whose new
WAL files the server could not open) or as a PostgreSQL role without DDL
rights; migrating the schema is the server's job at startup, under its own
checks, so the command says "run the server once" instead.  For the same
reason a missing SQLite file is an error, not a new empty database: a typo
in ``--db`` must not look like a server with no users.

The connection runs the way the server's pool does (SQLite's implicit
transactions: reads take no lock, a write waits up to the busy timeout for
the server's writer), so a command works while the server runs and holds
the write lock only for its own short writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from dkserver.config import DEFAULT_DB, Config, ConfigError, from_sources
from dkserver.store import Store, StoreError, pg_schema, schema
from dkserver.store.database import Txn
from dkserver.store.engine import Engine, PostgresEngine, Sqlite3Engine
from dkserver.store.pool import configure_postgres, configure_sqlite
from dkserver.store.url import DatabaseUrl

from .errors import AdminError, OperationFailed

R = TypeVar("R")

#: The settings an admin command reads from the environment: where the
#: database is and how to connect.  Only these, so that a command is not
#: refused over a setting it does not use (say, a missing DK_TRACKER_DIR);
#: ``check-config`` validates everything.
DATABASE_SETTINGS = (
    "DK_DB",
    "DK_DB_CONNECT_TIMEOUT",
    "DK_DB_STATEMENT_TIMEOUT",
    "DK_SQLITE_SYNCHRONOUS",
)

#: Exit code of a command stopped by Ctrl-C or SIGTERM.
EXIT_INTERRUPTED = 130


# --- options and registration ----------------------------------------------


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--db`` and ``--json``, as every admin command takes them."""
    parser.add_argument(
        "--db",
        metavar="DATABASE",
        default=None,
        help="SQLite file or postgresql://user@host:port/dbname, as the "
        f"server's --db [env DK_DB, default {DEFAULT_DB}]",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (for scripts) instead of text",
    )
    # a stray argument is reported by this command's parser (dkserver/cli.py)
    parser.set_defaults(command_parser=parser)


def whole_number(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=`` for a whole number from ``low`` (to ``high``),
    with the one-line message every admin command gives."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            message = f"{text!r} is not a whole number"
            raise argparse.ArgumentTypeError(message) from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be from {low} to {high}, got {value}"
            )
        return value

    return parse


def command_group(
    subparsers: argparse._SubParsersAction, name: str, help: str
) -> argparse._SubParsersAction:
    """The subcommands of ``dkserver NAME`` (``user``), created on first use."""
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help, description=help)
        group = parser.add_subparsers(
            dest=f"{name}_command",
            metavar="COMMAND",
            parser_class=type(parser),
        )
        group.required = True
        parser._dk_group = group  # type: ignore[attr-defined]
    return parser._dk_group  # type: ignore[attr-defined]


def command(
    name: str, body: Callable[[argparse.Namespace], int | None]
) -> Callable[[argparse.Namespace], int]:
    """``body`` as a parser's ``run``: errors become one line and an exit code."""

    def run(args: argparse.Namespace) -> int:
        prog = f"dkserver {name}"
        try:
            code = body(args)
            sys.stdout.flush()
        except AdminError as e:
            return _fail(prog, str(e), e.exit_code)
        except (StoreError, sqlite3.Error, psycopg.Error) as e:
            return _fail(prog, one_line(e), OperationFailed.exit_code)
        except KeyboardInterrupt:
            return _fail(prog, "interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:
            # the reader went away (``| head``): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return OperationFailed.exit_code
        return 0 if code is None else code

    return run


def _fail(prog: str, message: str, code: int) -> int:
    sys.stdout.flush()
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def one_line(error: BaseException) -> str:
    """An exception's text on one line (driver messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


# --- the database -------------------------------------------------------------


def database_config(args: argparse.Namespace) -> Config:
    """The server's configuration of the database (``--db`` over ``DK_DB``,
    the timeouts, SQLite's synchronous mode), parsed by the server's code."""
    environ = {k: os.environ[k] for k in DATABASE_SETTINGS if k in os.environ}
    try:
        return from_sources({"db": getattr(args, "db", None)}, environ)
    except ConfigError as e:
        key = "DK_DB/--db" if e.key == "DK_DB" else e.key
        raise AdminError(f"{key}: {str(e).partition(': ')[2]}") from None


class AdminDatabase:
    """One synchronous connection to the configured database; see the module
    docstring.  Made by `open_database`."""

    def __init__(self, conn: Any, url: DatabaseUrl, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self._conn = conn
        self.store = Store(_SyncPool(conn), url.redacted, engine)

    @property
    def is_postgresql(self) -> bool:
        return isinstance(self.engine, PostgresEngine)

    @property
    def connection(self) -> Any:
        """The raw ``sqlite3`` / ``psycopg`` connection (``backup`` needs it)."""
        return self._conn

    def run(self, awaitable: Awaitable[R]) -> R:
        """The result of a store method (a coroutine), run to the end now."""
        results: list[Any] = []
        Deferred.fromCoroutine(awaitable).addBoth(results.append)  # type: ignore[arg-type]
        if not results:
            raise RuntimeError("the coroutine waited for something only a reactor runs")
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    @contextmanager
    def transaction(self) -> Iterator[Txn]:
        cursor = self._conn.cursor()
        try:
            yield Txn(cursor, self.engine)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        finally:
            _close_quietly(cursor)

    def _commit(self) -> None:
        try:
            self._conn.commit()
        except self.engine.driver_errors as e:
            raise OperationFailed(f"commit failed: {one_line(e)}") from e

    def _rollback(self) -> None:
        with suppress(*self.engine.driver_errors):  # gone: nothing committed
            self._conn.rollback()

    def close(self) -> None:
        _close_quietly(self._conn)


class _SyncPool:
    """What `Store` asks of an adbapi pool, on one connection and at once:
    each interaction is a transaction (commit, or rollback on error) and
    its Deferred has fired when ``runInteraction`` returns."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def runInteraction(self, interaction: Callable[..., Any], *args, **kw) -> Deferred:
        cursor = self._conn.cursor()
        try:
            result = interaction(cursor, *args, **kw)
            self._conn.commit()
        except BaseException:
            failure = Failure()
            with suppress(Exception):  # a broken connection: nothing committed
                self._conn.rollback()
            return fail(failure)
        finally:
            _close_quietly(cursor)
        return succeed(result)

    def close(self) -> None:
        _close_quietly(self._conn)


def _close_quietly(thing: Any) -> None:
    with suppress(Exception):
        thing.close()


@contextmanager
def open_database(args: argparse.Namespace) -> Iterator[AdminDatabase]:
    """The configured database, checked and open; closed at the end."""
    config = database_config(args)
    url = config.database
    assert url is not None
    if url.is_postgresql:
        db = AdminDatabase(_open_postgres(config), url, PostgresEngine())
    else:
        db = AdminDatabase(_open_sqlite(config), url, Sqlite3Engine())
    try:
        yield db
    finally:
        db.close()


def _open_sqlite(config: Config) -> sqlite3.Connection:
    path = str(config.database.path)
    if path == ":memory:":
        raise AdminError("DK_DB/--db: :memory: is no database a server shares")
    if path.startswith("file:"):
        target, uri = path, True
    else:
        file = Path(path)
        if not file.exists():
            raise AdminError(
                f"database file {path} does not exist (DK_DB/--db; the server "
                "creates it when it first starts)"
            )
        if not file.is_file():
            raise AdminError(f"database {path} is not a file")
        # mode=rw: never create a file (a typo must not look like an empty server)
        target, uri = f"{file.resolve().as_uri()}?mode=rw", True
    try:
        conn = sqlite3.connect(target, uri=uri)
    except sqlite3.Error as e:
        raise AdminError(f"cannot open database {path}: {one_line(e)}") from e
    try:
        try:
            found = schema.version_of(conn)
        except sqlite3.DatabaseError as e:
            raise AdminError(
                f"{path} is not a usable SQLite database: {one_line(e)}"
            ) from e
        _check_version(path, found, schema.LATEST_VERSION)
        try:
            configure_sqlite(conn, config.sqlite_synchronous)
        except sqlite3.Error as e:
            raise OperationFailed(f"cannot use database {path}: {one_line(e)}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def _open_postgres(config: Config) -> Any:
    url = config.database
    try:
        conn = psycopg.connect(
            url.conninfo, connect_timeout=max(1, round(config.db_connect_timeout))
        )
    except psycopg.Error as e:
        raise OperationFailed(
            f"cannot connect to PostgreSQL at {url.redacted}: {one_line(e)}"
        ) from e
    try:
        try:
            configure_postgres(conn, config.db_statement_timeout)
            found = pg_schema.current_version(conn)
            conn.rollback()
        except psycopg.Error as e:
            raise OperationFailed(
                f"cannot use PostgreSQL database {url.redacted}: {one_line(e)}"
            ) from e
        _check_version(url.redacted, found, pg_schema.LATEST_VERSION)
    except BaseException:
        _close_quietly(conn)
        raise
    return conn


def _check_version(where: str, found: int, latest: int) -> None:
    if found == latest:
        return
    if found == 0:
        raise AdminError(
            f"database {where} has no dkserver schema: run the server once on "
            "it to create (or upgrade) it"
        )
    if found < latest:
        raise AdminError(
            f"database {where} is at schema version {found}, this dkserver "
            f"needs {latest}: run the server (this version) once to migrate it"
        )
    raise AdminError(
        f"database {where} is at schema version {found}, newer than this "
        f"dkserver knows ({latest}): use the dkserver that wrote it"
    )


# --- output -------------------------------------------------------------------


def emit(args: argparse.Namespace, document: Any, lines: Iterable[str]) -> None:
    """``document`` as one JSON document with ``--json``, else ``lines``."""
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        for line in lines:
            print(line)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Rows in left-aligned columns under ``headers``; ``None`` shows as ``-``."""
    cells = [list(headers)] + [
        ["-" if v is None else str(v) for v in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
