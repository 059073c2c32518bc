"""Shared fixtures: a real dkserver on ephemeral loopback ports, and a
hermetic session.

Hermetic: a checkout that ran ``scripts/serve`` has ``dist/dk.pyz``,
``dkserver.db`` and ``certs/`` in it, and a developer's shell may export
``DK_*`` settings; neither may change a test's result.  So the session runs
in a working directory of its own, seeded with decoys of exactly that state
(garbage files a test would trip over if it read a cwd-relative default),
with the server's environment variables removed and Hypothesis's example
database (``.hypothesis/`` in the working directory) off.  At the end, the
decoys must be untouched and the checkout must hold no state the tests made.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from dkserver.admin import port_db
from tests.support import postgres as _pg
from tests.support import redis as _redis
from tests.support.mounts import MOUNT_SKIP
from tests.support.server import make_config, start_server, stop_server

REPO = Path(__file__).resolve().parents[1]

#: Settings the server reads from the environment (README, Configuration).
SERVER_ENVIRONMENT = (
    "SERVER_ADDR",
    "HTTP_ADDR",
    "JWT_SECRET",
    "MESSAGE_RATE_LIMIT",
    "MESSAGE_BURST_LIMIT",
    "LOGIN_RATE_LIMIT",
    "LOGIN_BURST_LIMIT",
    # the state directory of a PostgreSQL node without a secret file
    # (dkserver.config.state_directory); XDG_CACHE_HOME is set per session
    "CACHE_DIRECTORY",
    "STATE_DIRECTORY",
    # a test run inside a systemd unit must not notify that unit's manager
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)

#: What scripts/serve leaves in the working directory, as decoys.
DECOYS = {
    "dist/dk.pyz": b"decoy: a stale client build, not a zip\n",
    "dkserver.db": b"decoy: not an SQLite database\n",
    "dkserver.db.jwt-secret": b"decoy-secret-decoy-secret-decoy!!",
    "certs/server.pem": b"decoy: not a certificate\n",
    "certs/server.key": b"decoy: not a key\n",
}

#: Checkout paths that local runs create; the tests must not.
CHECKOUT_STATE = ("dist", "dkserver.db", "certs/server.pem", ".hypothesis")

settings.register_profile("hermetic", database=None)
settings.load_profile("hermetic")

_hypothesis_home: str | None = None


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: a test about SQLite itself; not run on PostgreSQL"
    )
    config.addinivalue_line(
        "markers", "both_backends: run this storage test on SQLite and PostgreSQL"
    )
    # Hypothesis also caches (unicode tables, constants) under ./.hypothesis,
    # resolved when it is imported: before the session changes directory.
    global _hypothesis_home
    _hypothesis_home = tempfile.mkdtemp(prefix="dk-tests-hypothesis-")
    set_hypothesis_home_dir(_hypothesis_home)


def pytest_unconfigure(config) -> None:
    if _hypothesis_home is not None:
        shutil.rmtree(_hypothesis_home, ignore_errors=True)


def _checkout_state() -> dict[str, int | None]:
    state = {}
    for name in CHECKOUT_STATE:
        path = REPO / name
        state[name] = path.stat().st_mtime_ns if path.exists() else None
    return state


@pytest.fixture(scope="session", autouse=True)
def hermetic_session(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    for name, content in DECOYS.items():
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cwd / name).write_bytes(content)
    saved_env = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        # DK_TEST_* configure the test run itself (which PostgreSQL, the
        # wheelhouse, CI's "PostgreSQL is required"), not the server.
        if (k.startswith("DK_") and not k.startswith("DK_TEST_"))
        or k in SERVER_ENVIRONMENT
    }
    # A PostgreSQL server without a secret file builds its client in the XDG
    # cache directory: the session's own, not the developer's ~/.cache.
    saved_cache = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    before = _checkout_state()
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        yield cwd
    finally:
        os.chdir(old_cwd)
        os.environ.update(saved_env)
        if saved_cache is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved_cache
    changed = [
        name for name, content in DECOYS.items() if (cwd / name).read_bytes() != content
    ]
    assert not changed, f"tests wrote cwd-relative state: {changed}"
    made = [k for k, v in _checkout_state().items() if v != before[k] and v]
    assert not made, f"tests created or changed state in the checkout: {made}"


@pytest.fixture
def db_target(backend, tmp_path, request) -> str:
    """The ``--db`` value of the test's server: a SQLite file or a fresh
    PostgreSQL database of this run's private server."""
    if backend == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "dk.db")


@pytest.fixture
def backend_config(tmp_path, db_target):
    """``make_config`` on the test's backend: ``backend_config(**overrides)``,
    for a test that starts (and restarts) its own server."""
    return functools.partial(make_config, tmp_path, db_target)


@pytest.fixture
def from_sqlite_file(backend, request):
    """``from_sqlite_file(path)``: the ``--db`` of a server that holds what the
    SQLite file at ``path`` (one the original server wrote, say) holds: the
    file itself, which dkserver upgrades in place, or on PostgreSQL a fresh
    database that ``dkserver port-db`` filled from it, as an operator would."""

    def target(path) -> str:
        if backend != "postgresql":
            return str(path)
        url = request.getfixturevalue("pg_empty_url")
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = port_db.main([str(path), url])
        assert rc == 0, out.getvalue()
        return url

    return target


@pytest.fixture(scope="module")
def module_db_target(backend, tmp_path_factory, request):
    """``db_target`` for a module-scoped server: one database per module and
    backend."""
    if backend != "postgresql":
        yield str(tmp_path_factory.mktemp("db") / "dk.db")
        return
    pg_server = request.getfixturevalue("pg_server")
    name = pg_server.create_database(migrated=True)
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest_twisted.async_yield_fixture
async def server(tmp_path, db_target):
    running = await start_server(make_config(tmp_path, db=db_target))
    yield running
    await stop_server(running)


# --- PostgreSQL: a private server per test run, a fresh database per test ----
# (tests/support/postgres.py).  Without binaries or DK_TEST_POSTGRES_URL the
# tests that ask for these fixtures are skipped, and the run ends with a line
# that says so and why (or they fail, with DK_TEST_REQUIRE_POSTGRES set, as
# .ci/run sets it).


_PG_SKIP = "PostgreSQL unavailable: "


@pytest.fixture(scope="session")
def pg_server():
    """The PostgreSQL server of this test run (private, or DK_TEST_POSTGRES_URL)."""
    try:
        server, private = _pg.open_server()
    except _pg.PostgresUnavailable as e:
        if os.environ.get(_pg.ENV_REQUIRE):  # CI: a skip would hide the gap
            pytest.fail(f"{_pg.ENV_REQUIRE} is set and {_PG_SKIP}{e}", pytrace=False)
        pytest.skip(_PG_SKIP + str(e).splitlines()[0])
    try:
        yield server
    finally:
        if private is not None:
            private.stop()
        else:
            server.drop_all()


@pytest.fixture
def pg_url(pg_server):
    """URL of a fresh database at the latest schema, dropped afterwards."""
    name = pg_server.create_database(migrated=True)
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture
def pg_empty_url(pg_server):
    """URL of a fresh, empty database (for migration tests)."""
    name = pg_server.create_database(migrated=False)
    yield pg_server.url(name)
    pg_server.drop_database(name)


# --- Redis: a private server per test (tests/support/redis.py) --------------

_REDIS_SKIP = "Redis unavailable: "


@pytest.fixture
def redis_server():
    """A fresh Redis for this test (private, or DK_TEST_REDIS_URL flushed)."""
    try:
        server = _redis.open_server()
    except _redis.RedisUnavailable as e:
        if os.environ.get(_redis.ENV_REQUIRE):  # CI: a skip would hide the gap
            pytest.fail(
                f"{_redis.ENV_REQUIRE} is set and {_REDIS_SKIP}{e}", pytrace=False
            )
        pytest.skip(_REDIS_SKIP + str(e).splitlines()[0])
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server.url


def pytest_terminal_summary(terminalreporter):
    for marker, what in (
        (_PG_SKIP, "PostgreSQL"),
        (_REDIS_SKIP, "Redis"),
        (MOUNT_SKIP, "storage-fault"),
    ):
        reasons: dict[str, int] = {}
        for report in terminalreporter.stats.get("skipped", []):
            longrepr = report.longrepr
            message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            if marker in message:
                reason = message[message.index(marker) + len(marker) :]
                reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            terminalreporter.write_line(
                f"SKIPPED {count} {what} tests: {reason}", yellow=True, bold=True
            )


# --- Backends ---------------------------------------------------------------
# ``backend`` is "sqlite" unless the test is in tests/store or marked
# ``both_backends`` (the end-to-end modules that exercise storage): those run
# once per backend, or on the one ``--backend`` names.  The parameter is
# module-scoped, so a module-scoped server (``module_db_target``) serves all
# of a module's tests on one backend, then on the other.

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def backend() -> str:
    return "sqlite"


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        choices=(*BACKENDS, "all"),
        default="all",
        help="run the backend-parametrized tests on this store backend only",
    )


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    in_store_tests = (
        "store"
        in metafunc.definition.path.relative_to(metafunc.config.rootpath).parts[:2]
    )
    if not in_store_tests and not metafunc.definition.get_closest_marker(
        "both_backends"
    ):
        return  # the fixture's "sqlite"
    chosen = metafunc.config.getoption("--backend")
    backends = BACKENDS if chosen == "all" else (chosen,)
    if metafunc.definition.get_closest_marker("sqlite_only"):
        backends = tuple(b for b in backends if b == "sqlite")
    # An empty list makes pytest report the test as skipped, with the reason.
    metafunc.parametrize("backend", backends, scope="module")
