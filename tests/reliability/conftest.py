"""Fixtures shared by the reliability tests."""

from __future__ import annotations

import os

import pytest

from tests.support import postgres as _pg


@pytest.fixture
def own_postgres():
    """A private PostgreSQL for this test alone, with durable commits."""
    bindir = _pg.find_bindir()
    private = None
    try:
        if bindir is None:
            raise _pg.PostgresUnavailable(
                "no PostgreSQL binaries to start a server of the test's own"
            )
        private = _pg.PrivateServer(
            bindir, {**_pg.FAST_SETTINGS, "synchronous_commit": "on"}
        )
        private.start()
    except _pg.PostgresUnavailable as e:
        if os.environ.get(_pg.ENV_REQUIRE):
            pytest.fail(f"{_pg.ENV_REQUIRE} is set: {e}", pytrace=False)
        pytest.skip("PostgreSQL unavailable: " + str(e).splitlines()[0])
    try:
        yield private
    finally:
        private.stop()
