"""Shared fixtures: a real dkserver on ephemeral loopback ports, per backend."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.support.server import make_config, start_server, stop_server


@pytest.fixture
def db_target(backend, tmp_path, request) -> str:
    """The ``--db`` value of the test's server: a SQLite file or a fresh
    PostgreSQL database of this run's private server."""
    if backend == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "dk.db")


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

import os  # noqa: E402

from tests.support import postgres as _pg  # noqa: E402

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


def pytest_terminal_summary(terminalreporter):
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        if _PG_SKIP in message:
            reason = message[message.index(_PG_SKIP) + len(_PG_SKIP) :]
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        terminalreporter.write_line(
            f"SKIPPED {count} PostgreSQL tests: {reason}", yellow=True, bold=True
        )


# --- Backends ---------------------------------------------------------------
# ``backend`` is "sqlite" unless the test is in tests/store or marked
# ``both_backends`` (the end-to-end modules that exercise storage): those run
# once per backend, or on the one ``--backend`` names.

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def backend() -> str:
    return "sqlite"


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        choices=(*BACKENDS, "all"),
        default="all",
        help="run the backend-parametrized tests on this store backend only",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sqlite_only: a test about SQLite itself; not run on PostgreSQL"
    )
    config.addinivalue_line(
        "markers", "both_backends: run this storage test on SQLite and PostgreSQL"
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
    metafunc.parametrize("backend", backends)
