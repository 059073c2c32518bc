"""SettingsStore and the JWT secret kept in the database (schema version 6)."""

from __future__ import annotations

import pytest
import pytest_twisted

from dkserver.auth.secret import RECOMMENDED_SECRET_BYTES, SecretError
from dkserver.cluster.secret import SETTING, database_secret


@pytest_twisted.ensureDeferred
async def test_the_first_value_stored_is_the_one_everyone_gets(store, sql, db_path):
    assert await store.settings.get("x") is None
    assert await store.settings.get_or_create("x", "first") == "first"
    assert await store.settings.get_or_create("x", "second") == "first"
    assert await store.settings.get("x") == "first"
    assert sql(db_path, "SELECT name, value FROM server_settings") == [("x", "first")]


@pytest_twisted.ensureDeferred
async def test_database_secret_is_generated_once_and_read_back(store, sql, db_path):
    secret = await database_secret(store.settings)
    assert len(secret) == RECOMMENDED_SECRET_BYTES
    assert await database_secret(store.settings) == secret
    assert sql(
        db_path, "SELECT value FROM server_settings WHERE name = ?", (SETTING,)
    ) == [(secret.hex(),)]


@pytest_twisted.ensureDeferred
async def test_a_damaged_database_secret_stops_with_one_line(store):
    await store.settings.get_or_create(SETTING, "not hex at all")
    with pytest.raises(SecretError) as e:
        await database_secret(store.settings)
    assert "server_settings" in str(e.value) and "\n" not in str(e.value)
