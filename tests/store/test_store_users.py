"""UserStore."""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from dkserver.store import User, UserExists


@pytest_twisted.ensureDeferred
async def test_create_get_exists(store, sql, db_path):
    ns = 1_795_668_340_123_456_789
    await store.users.create("alice", "Alice", "a2V5", registered_ns=ns)
    assert await store.users.get("alice") == User("alice", "Alice", "a2V5", ns)
    assert await store.users.exists("alice") is True
    assert await store.users.exists("bob") is False
    assert await store.users.get("bob") is None
    # created_at in SQLite's CURRENT_TIMESTAMP format, UTC, like the original
    assert sql(db_path, "SELECT created_at FROM users") == [("2026-11-26 04:45:40",)]


@pytest_twisted.ensureDeferred
async def test_duplicate_user_raises_user_exists(store):
    await store.users.create("alice", "Alice", "a2V5")
    with pytest.raises(UserExists) as info:
        await store.users.create("alice", "Other", "b3RoZXI=")
    assert info.value.user_id == "alice"
    assert (await store.users.get("alice")).username == "Alice"


@pytest_twisted.ensureDeferred
async def test_registration_defaults_to_now(store):
    before = time.time_ns()
    await store.users.create("bob", "Bob", "a2V5")
    after = time.time_ns()
    assert before <= (await store.users.get("bob")).registered_ns <= after


@pytest_twisted.ensureDeferred
async def test_all_ids_sorted(store):
    assert await store.users.all_ids() == []
    for uid in ("carol", "alice", "bob"):
        await store.users.create(uid, uid, "a2V5")
    assert await store.users.all_ids() == ["alice", "bob", "carol"]


@pytest_twisted.ensureDeferred
async def test_lookup_of_an_id_with_a_nul_finds_nobody(store):
    """A URL may carry any id; PostgreSQL refuses a NUL in a parameter, and no
    user can hold one, so the lookup answers "no such user" on both."""
    await store.users.create("alice", "Alice", "a2V5")
    assert await store.users.get("alice\x00") is None
    assert not await store.users.exists("\x00")
    assert await store.descriptions.get("alice\x00") == []
