"""The databases a bench run measures dkserver on: ``--db``.

Each ``--db`` value names one backend; the runner starts a dkserver per
backend and round, and every such server run gets a database of its own, so
no run sees another's rows, indexes or dead tuples:

- ``sqlite``: a fresh file in the run's temporary directory (the default);
- a path or ``sqlite:`` URL: a fresh file there (refused if it exists; removed
  afterwards);
- ``postgresql``: a private, durable server (``fsync`` and
  ``synchronous_commit`` on, as in production) the bench starts from the
  installed binaries and stops at the end;
- ``postgresql://…``: an existing server; each run creates a schema of its own
  in that database (``search_path`` through the URL's ``options``) and drops
  it afterwards; nothing else there is touched;
- ``both``: ``sqlite`` and ``postgresql``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from bench.procs import tree_cpu_seconds
from dkserver.store.url import DatabaseUrlError, parse_database_url

#: A durable server for measuring: the defaults (fsync, synchronous_commit
#: and full_page_writes on), small and quiet.
DURABLE_SETTINGS = {
    "max_connections": "40",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
}


class BackendError(ValueError):
    """A ``--db`` value that names no usable database; the message says why."""


class SqliteBackend:
    kind = "sqlite"

    def __init__(self, path: str | None = None) -> None:
        #: ``None``: a file in each run's directory.
        self.path = path
        self.label = "sqlite" if path is None else f"sqlite:{path}"
        self._made: list[str] = []

    def start(self) -> None:
        if self.path is not None and os.path.exists(self.path):
            raise BackendError(f"--db {self.path}: exists; the bench wants a new file")

    def open(self, run_dir: str) -> tuple[str, dict[str, str]]:
        """The server's ``--db`` for one run, and its extra environment."""
        path = self.path or os.path.join(run_dir, "dk.db")
        made = [path + suffix for suffix in ("", "-wal", "-shm", ".jwt-secret")]
        # The server builds its client beside the database file.
        client = os.path.join(os.path.dirname(path), "dk.pyz")
        self._made = made + ([] if os.path.exists(client) else [client])
        return path, {}

    def close(self) -> None:
        if self.path is not None:
            for name in self._made:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name)
        self._made = []

    def db_cpu(self) -> float | None:
        """SQLite runs inside dkserver: its CPU is the server's."""
        return None

    def stop(self) -> None:
        pass


class PostgresBackend:
    """A private server (``url`` None) or the server of a given URL."""

    kind = "postgresql"

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self.label = "postgresql" if url is None else parse_database_url(url).redacted
        self._private = None
        self._postmaster: int | None = None
        self._schema: str | None = None
        self._conninfo: str | None = None

    def start(self) -> None:
        if self.url is None:
            from tests.support.postgres import (
                PostgresUnavailable,
                PrivateServer,
                find_bindir,
            )

            bindir = find_bindir()
            if bindir is None:
                raise BackendError(
                    "--db postgresql: no PostgreSQL binaries (initdb, pg_ctl); "
                    "install postgresql or pass --db postgresql://…"
                )
            self._private = PrivateServer(bindir, settings=DURABLE_SETTINGS)
            try:
                server = self._private.start()
            except PostgresUnavailable as e:
                raise BackendError(f"--db postgresql: {e}") from e
            self.url = server.url("postgres")
            pid_file = self._private.data / "postmaster.pid"
            self._postmaster = int(pid_file.read_text().split()[0])
        self._conninfo = parse_database_url(self.url).conninfo
        import psycopg

        try:
            psycopg.connect(self._conninfo, connect_timeout=10).close()
        except psycopg.Error as e:
            raise BackendError(f"--db {self.label}: cannot connect: {e}") from e

    def open(self, run_dir: str) -> tuple[str, dict[str, str]]:
        """A fresh schema; the server's URL selects it, and a JWT secret file
        (a PostgreSQL URL names no directory to keep one in)."""
        import psycopg
        from psycopg import sql

        self._schema = f"dk_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self._schema))
            )
        env = {"DK_JWT_SECRET_FILE": os.path.join(run_dir, "jwt-secret")}
        return with_search_path(self.url, self._schema), env

    def close(self) -> None:
        if self._schema is None:
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(self._schema)
                )
            )
        self._schema = None

    def db_cpu(self) -> float | None:
        """CPU seconds of the private server (postmaster and its children);
        ``None`` for a server elsewhere."""
        if self._postmaster is None:
            return None
        return tree_cpu_seconds(self._postmaster)

    def stop(self) -> None:
        if self._private is not None:
            self._private.stop()
            self._private = None


Backend = SqliteBackend | PostgresBackend


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``options=-c search_path=<schema>`` (replacing any)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-c search_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def parse_backends(values: list[str] | None) -> list[Backend]:
    """The ``--db`` values as backends, in the order given (default sqlite)."""
    out: list[Backend] = []
    for value in values or ["sqlite"]:
        if value == "both":
            out += [SqliteBackend(), PostgresBackend()]
        elif value == "sqlite":
            out.append(SqliteBackend())
        elif value == "postgresql":
            out.append(PostgresBackend())
        else:
            try:
                url = parse_database_url(value)
            except DatabaseUrlError as e:
                raise BackendError(f"--db: {e}") from None
            if url.is_postgresql:
                out.append(PostgresBackend(value))
            elif url.path == ":memory:" or url.path.startswith("file:"):
                raise BackendError("--db: give SQLite as a file path")
            else:
                out.append(SqliteBackend(url.path))
    labels = [b.label for b in out]
    if len(set(labels)) != len(labels):
        raise BackendError(f"--db: a backend is named twice ({', '.join(labels)})")
    return out
