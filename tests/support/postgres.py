"""A private PostgreSQL for the tests (and ``bench/pg_write.py``).

The test run starts its own server from the installed binaries: ``initdb`` and
``pg_ctl`` in a temporary directory, listening on a free port on 127.0.0.1
only (its unix socket in that directory), password authentication, and
durability off (``fsync``, ``synchronous_commit``, ``full_page_writes``)
because a crashed test server is thrown away anyway.  Each test gets a fresh
database copied from a migrated template (``CREATE DATABASE … TEMPLATE``
copies files instead of replaying DDL).  ``DK_TEST_POSTGRES_URL`` names an
existing server to use instead; the per-test databases are created and
dropped on it.

Written here rather than taken from pytest-postgresql because the machines
run the tests as root: ``initdb``/``pg_ctl`` refuse root, and pytest-postgresql
runs them as the current user with no way to switch (its issue #455).  As
root, the server runs as the ``postgres`` user that Debian's package creates
(``nobody`` when there is none), through ``subprocess``'s ``user=``.

No stray servers: besides the fixture's teardown and ``atexit``, a watchdog
process in its own session holds a pipe from this process; when the pipe
closes for any reason (Ctrl-C, a crash, SIGKILL) it stops the server with
``pg_ctl stop -m immediate`` and removes the directory.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

ENV_URL = "DK_TEST_POSTGRES_URL"
ENV_BINDIR = "DK_TEST_POSTGRES_BINDIR"
#: Set (by .ci/run): no PostgreSQL is a test error rather than a skip.
ENV_REQUIRE = "DK_TEST_REQUIRE_POSTGRES"

#: Settings for a throwaway server: durability off, small and quiet.
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}

_START_TIMEOUT = 60


class PostgresUnavailable(Exception):
    """No PostgreSQL for the tests; the message says why (a skip reason)."""


_TOOLS = ("initdb", "pg_ctl", "postgres")


def find_bindir() -> Path | None:
    """Where ``initdb``/``pg_ctl``/``postgres`` are: ``DK_TEST_POSTGRES_BINDIR``
    when set (and then only there: a chosen version must not be swapped for
    another silently), else ``pg_config --bindir``, then ``PATH``, then the
    newest ``/usr/lib/postgresql/*/bin`` (Debian keeps them off ``PATH``)."""
    if os.environ.get(ENV_BINDIR):
        chosen = Path(os.environ[ENV_BINDIR])
        return chosen if all((chosen / t).is_file() for t in _TOOLS) else None
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version)
    ][::-1]
    for c in candidates:
        if all((c / tool).is_file() for tool in _TOOLS):
            return c
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A PostgreSQL server the tests may create databases on."""

    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    #: The database to connect to for CREATE/DROP DATABASE.
    admin_db: str = "postgres"
    #: Prefix of the databases this run creates (unique per run on a shared
    #: server, so parallel runs never drop each other's).
    prefix: str = "dk_test"
    _counter: int = 0
    _template: str | None = None

    def url(self, dbname: str) -> str:
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{auth}@{host}:{self.port}/{quote(dbname, safe='')}"

    def connect(self, dbname: str | None = None, **kw) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.admin_db,
            connect_timeout=10,
            **kw,
        )

    def template(self) -> str:
        """The migrated template database, created on first use."""
        if self._template is None:
            from dkserver.store import pg_schema

            name = f"{self.prefix}_template"
            self._create(name, None)
            with self.connect(name) as conn:
                pg_schema.migrate_connection(conn)
            with self.connect(autocommit=True) as conn:
                # no connections allowed: CREATE DATABASE … TEMPLATE needs none
                conn.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                        sql.Identifier(name)
                    )
                )
            self._template = name
        return self._template

    def create_database(
        self, *, migrated: bool = True, icu_locale: str | None = None
    ) -> str:
        """A fresh database (migrated to the latest schema, or empty).

        ``icu_locale`` (empty databases only) makes its default collation a
        natural-language one, as production databases usually have, where
        the test server's default is ``C``.
        """
        self._counter += 1
        name = f"{self.prefix}_{self._counter}"
        if icu_locale is not None:
            if migrated:
                raise ValueError("a database with its own locale starts empty")
            self._create(name, None, icu_locale)
        else:
            self._create(name, self.template() if migrated else None)
        return name

    def drop_database(self, name: str) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )

    def drop_all(self) -> None:
        """Drop every database this run created (for a shared server)."""
        with self.connect(autocommit=True) as conn:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s",
                    (self.prefix.replace("_", r"\_") + r"\_%",),
                )
            ]
        for name in names:
            self.drop_database(name)

    def _create(
        self, name: str, template: str | None, icu_locale: str | None = None
    ) -> None:
        query = sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template or "template0")
        )
        if icu_locale is not None:
            query += sql.SQL(" LOCALE 'C' LOCALE_PROVIDER icu ICU_LOCALE {}").format(
                sql.Literal(icu_locale)
            )
        with self.connect(autocommit=True) as conn:
            conn.execute(query)


def external_server(url: str) -> PgServer:
    """The server named by ``DK_TEST_POSTGRES_URL`` (its path: the database to
    connect to for CREATE DATABASE, default ``postgres``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise PostgresUnavailable(
            f"{ENV_URL} must be postgresql://user:password@host:port/db"
        )
    from urllib.parse import unquote

    server = PgServer(
        host=parts.hostname,
        port=parts.port or 5432,
        user=unquote(parts.username or pwd.getpwuid(os.getuid()).pw_name),
        password=unquote(parts.password) if parts.password is not None else None,
        admin_db=unquote(parts.path.lstrip("/")) or "postgres",
        prefix=f"dk_test_{uuid.uuid4().hex[:8]}",
    )
    try:
        server.connect().close()
    except psycopg.Error as e:
        netloc = parts.netloc.rpartition("@")[2]
        safe = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        raise PostgresUnavailable(f"{ENV_URL} ({safe}) is unreachable: {e}") from e
    return server


class PrivateServer:
    """An initdb'd server in a temporary directory, stopped by :meth:`stop`."""

    def __init__(self, bindir: Path, settings: dict[str, str] | None = None) -> None:
        self.bindir = bindir
        self.settings = dict(FAST_SETTINGS if settings is None else settings)
        self.dir: Path | None = None
        self.server: PgServer | None = None
        self._watchdog: subprocess.Popen | None = None
        self._run_as: pwd.struct_passwd | None = None

    @property
    def data(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    def start(self) -> PgServer:
        self._run_as = _server_account()
        self.dir = Path(tempfile.mkdtemp(prefix="dk-pg-"))
        atexit.register(self.stop)
        if self._run_as is not None:
            os.chown(self.dir, self._run_as.pw_uid, self._run_as.pw_gid)
        password = secrets.token_urlsafe(18)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(password + "\n")
        if self._run_as is not None:
            os.chown(pwfile, self._run_as.pw_uid, self._run_as.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "dk",
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        pwfile.unlink()
        # TCP on 127.0.0.1 only, with the password; no other host lines.
        hba = self.data / "pg_hba.conf"
        hba.write_text("local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n")
        if self._run_as is not None:
            os.chown(hba, self._run_as.pw_uid, self._run_as.pw_gid)
        self._start_watchdog()
        last: Exception | None = None
        for _attempt in range(5):  # a free port can be taken before we bind it
            port = free_port()
            try:
                self._pg_ctl_start(port)
            except PostgresUnavailable as e:
                last = e
                continue
            self.server = PgServer("127.0.0.1", port, "dk", password)
            return self.server
        self.stop()
        raise last or PostgresUnavailable("PostgreSQL did not start")

    def _pg_ctl_start(self, port: int) -> None:
        assert self.dir is not None
        options = [
            f"-p {port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.dir}",
        ] + [f"-c {k}={v}" for k, v in self.settings.items()]
        log = self.dir / "server.log"
        try:
            self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-D",
                str(self.data),
                "-l",
                str(log),
                "-o",
                " ".join(options),
            )
        except PostgresUnavailable as e:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"{e}\n{tail}") from e

    def _start_watchdog(self) -> None:
        """A process that stops the server once this one is gone."""
        assert self.dir is not None
        argv = [str(self.bindir / "pg_ctl"), "stop", "-m", "immediate"]
        argv += ["-D", str(self.data)]
        account = {}
        if self._run_as is not None:
            account = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid}
        script = (
            "import shutil, subprocess, sys\n"
            "sys.stdin.buffer.read()\n"
            f"subprocess.run({argv!r}, capture_output=True, **{account!r})\n"
            f"shutil.rmtree({str(self.dir)!r}, ignore_errors=True)\n"
        )
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us, not the watchdog
        )

    def shut_down(self, mode: str = "fast") -> None:
        """Stop the server but keep its data, for :meth:`start_again`
        (``mode``: pg_ctl's ``fast`` or ``immediate``, a crash)."""
        self._run("pg_ctl", "stop", "-m", mode, "-w", "-D", str(self.data))

    def start_again(self) -> None:
        """Start a server stopped by :meth:`shut_down`, on the same port."""
        assert self.server is not None
        self._pg_ctl_start(self.server.port)

    def stop(self) -> None:
        """Stop the server and remove its directory; safe to call twice."""
        if self.dir is None:
            return
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(PostgresUnavailable):
                self._run(
                    "pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data)
                )
        if self._watchdog is not None:
            with contextlib.suppress(OSError):
                self._watchdog.stdin.close()  # lets it exit; nothing left to stop
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(timeout=30)
            self._watchdog = None
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        atexit.unregister(self.stop)

    def _run(self, tool: str, *args: str) -> None:
        kw: dict = {}
        if self._run_as is not None:
            kw = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid}
            kw["extra_groups"] = []
        try:
            subprocess.run(
                [str(self.bindir / tool), *args],
                capture_output=True,
                text=True,
                check=True,
                timeout=_START_TIMEOUT + 30,
                cwd=self.dir,
                # pg_ctl leaves the postmaster running: keep it out of our
                # process group so Ctrl-C does not stop it under a test
                start_new_session=True,
                **kw,
            )
        except subprocess.CalledProcessError as e:
            raise PostgresUnavailable(
                f"{tool} failed ({e.returncode}): {(e.stderr or e.stdout).strip()}"
            ) from e
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PostgresUnavailable(f"{tool} failed: {e}") from e


def _server_account() -> pwd.struct_passwd | None:
    """``None`` when not root (run as ourselves); else the unprivileged user
    the server must run as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable(
        "running as root and there is neither a postgres nor a nobody user "
        "to run PostgreSQL as"
    )


def open_server() -> tuple[PgServer, PrivateServer | None]:
    """The server to test against: ``DK_TEST_POSTGRES_URL`` or a private one.

    Raises :class:`PostgresUnavailable` with the reason to report.
    """
    url = os.environ.get(ENV_URL)
    if url:
        return external_server(url), None
    bindir = find_bindir()
    if bindir is None and os.environ.get(ENV_BINDIR):
        raise PostgresUnavailable(
            f"no PostgreSQL binaries (initdb, pg_ctl, postgres) in "
            f"{ENV_BINDIR}={os.environ[ENV_BINDIR]}; point it at a PostgreSQL "
            f"bin directory, unset it, or set {ENV_URL}"
        )
    if bindir is None:
        raise PostgresUnavailable(
            "no PostgreSQL binaries (initdb, pg_ctl, postgres) found via "
            f"pg_config, PATH or /usr/lib/postgresql/*/bin; install postgresql, "
            f"or set {ENV_BINDIR} or {ENV_URL}"
        )
    private = PrivateServer(bindir)
    return private.start(), private
