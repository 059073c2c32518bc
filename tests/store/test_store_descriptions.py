"""DescriptionStore."""

from __future__ import annotations

import pytest
import pytest_twisted

from dkserver.store import StoreError


@pytest_twisted.ensureDeferred
async def test_descriptions_roundtrip_and_replace(store, sql, db_path):
    await store.users.create("alice", "Alice", "a2V5")
    assert await store.descriptions.get("alice") == []
    await store.descriptions.set("alice", ["one", "café ☕", 'quote " and \\'])
    assert await store.descriptions.get("alice") == ["one", "café ☕", 'quote " and \\']
    await store.descriptions.set("alice", ["only"])
    assert await store.descriptions.get("alice") == ["only"]
    assert sql(db_path, "SELECT descriptions FROM user_descriptions") == [('["only"]',)]


@pytest.mark.parametrize("legacy", ["not json", '{"a": 1}', "[1, 2]", "null", ""])
@pytest_twisted.ensureDeferred
async def test_corrupt_legacy_value_reads_as_empty(store, sql, db_path, legacy):
    await store.users.create("alice", "Alice", "a2V5")
    sql(db_path, "INSERT INTO user_descriptions VALUES ('alice', ?)", (legacy,))
    assert await store.descriptions.get("alice") == []


@pytest_twisted.ensureDeferred
async def test_descriptions_of_unknown_user_are_refused(store):
    with pytest.raises(StoreError):
        await store.descriptions.set("ghost", ["boo"])
