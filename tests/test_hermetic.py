"""The session is hermetic (tests/conftest.py): what a local ``scripts/serve``
leaves in a checkout, and the developer's environment, reach no test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest_twisted
from hypothesis import settings
from hypothesis.configuration import storage_directory

from dkserver.config import DEFAULT_CERT, DEFAULT_DB, Config
from tests.conftest import DECOYS, REPO
from tests.support.server import make_config, start_server, stop_server


def test_tests_run_outside_the_checkout_beside_decoys(hermetic_session):
    cwd = Path.cwd()
    assert cwd == hermetic_session
    assert not cwd.is_relative_to(REPO) and not REPO.is_relative_to(cwd)
    for name in DECOYS:
        assert (cwd / name).is_file(), name
    # The server's cwd-relative defaults would land on the decoys, not on the
    # checkout's files.
    config = Config()
    for path in (DEFAULT_DB, DEFAULT_CERT, config.client_path):
        assert not os.path.isabs(path)
        assert (cwd / path).resolve().is_relative_to(cwd)


def test_server_environment_is_not_inherited():
    leaked = [
        k
        for k in os.environ
        if (k.startswith("DK_") and not k.startswith("DK_TEST_")) or k == "SERVER_ADDR"
    ]
    assert leaked == []


def test_the_test_run_settings_survive_the_hermetic_session():
    """CI's DK_TEST_REQUIRE_* must reach the fixtures, or a missing
    PostgreSQL, Redis or HAProxy would be a skip instead of a failure."""
    if os.environ.get("CI"):
        assert os.environ.get("DK_TEST_REQUIRE_POSTGRES") == "1"
        assert os.environ.get("DK_TEST_REQUIRE_REDIS") == "1"
        assert os.environ.get("DK_TEST_REQUIRE_HAPROXY") == "1"


def test_hypothesis_keeps_no_example_database_in_the_working_directory():
    assert settings().database is None
    home = storage_directory(intent_to_write=False).home_directory
    assert not home.is_relative_to(REPO) and not home.is_relative_to(Path.cwd())


@pytest_twisted.ensureDeferred
async def test_a_test_server_ignores_a_stale_client_build_in_the_working_directory(
    tmp_path,
):
    server = await start_server(make_config(tmp_path))
    try:
        response = await server.http.get(server.url("/download/linux"))
        body = await response.content()
    finally:
        await stop_server(server)
    assert response.code == 200
    assert body != DECOYS["dist/dk.pyz"] and body.startswith(b"#!")
