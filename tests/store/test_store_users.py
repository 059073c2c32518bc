"""UserStore."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from dkserver.store import User, UserExists
from dkserver.store.users import UserActivity, UserStore


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


@pytest_twisted.ensureDeferred
async def test_page_walks_users_in_id_order(store):
    for user_id in ("carol", "alice", "erin", "bob", "dave"):
        await store.users.create(user_id, user_id.title(), "a2V5", registered_ns=7)
    first = await store.users.page(None, 2)
    assert [u.user_id for u in first] == ["alice", "bob"]
    assert first[0] == User("alice", "Alice", "a2V5", 7)
    assert [u.user_id for u in await store.users.page("bob", 2)] == ["carol", "dave"]
    assert [u.user_id for u in await store.users.page("dave", 2)] == ["erin"]
    assert await store.users.page("erin", 2) == []
    # "after" need not be a registered id
    assert [u.user_id for u in await store.users.page("b", 1)] == ["bob"]


@pytest_twisted.ensureDeferred
async def test_activity_counts_pending_direct_messages_and_sessions(store):
    from dkserver.store import NewMessage

    await store.users.create("alice", "Alice", "a2V5")
    await store.users.create("bob", "Bob", "a2V5")
    assert await store.users.activity("bob") == UserActivity(0, 0, 0, None)

    def dm(to: str, content: str) -> NewMessage:
        return NewMessage(
            "alice", to, "2026-01-01T00:00:00Z", content, False, None, False, 1
        )

    ids = await store.messages.add_many(
        [dm("bob", "1"), dm("bob", "2"), dm("alice", "3")]
    )
    await store.messages.mark_delivered(ids[:1])
    bcast = NewMessage(
        "alice", "broadcast", "2026-01-01T00:00:00Z", "all", True, None, False, 2
    )
    await store.messages.add_many([bcast])
    start = 1_795_668_340_000_000_000
    await store.analytics.start_session("s1", "bob", start)
    await store.analytics.end_session("s1", start + 5 * 10**9)
    await store.analytics.start_session("s2", "bob", start + 10 * 10**9)
    activity = await store.users.activity("bob")
    assert activity.pending_direct == 1
    assert (activity.sessions, activity.open_sessions) == (2, 1)
    assert activity.last_session_start.startswith("2026-11-26 04:45:50")


def rename(sql, db_path: str, user_id: str, username: str) -> None:
    """Change a row behind the store's back: what its cache still answers
    shows whether a lookup went to the database."""
    sql(db_path, "UPDATE users SET username = ? WHERE user_id = ?", (username, user_id))


@pytest_twisted.ensureDeferred
async def test_warm_reads_every_user_into_the_cache_in_one_go(store, sql, db_path):
    for uid in ("alice", "bob", "carol"):
        await store.users.create(uid, uid.title(), "a2V5", registered_ns=5)
    sql(db_path, "UPDATE users SET status = 'banned' WHERE user_id = 'carol'")
    assert await store.users.warm() == 3
    for uid in ("alice", "bob", "carol"):
        rename(sql, db_path, uid, "Renamed")
    assert await store.users.get("alice") == User("alice", "Alice", "a2V5", 5)
    assert (await store.users.get("carol")).status == "banned"
    assert await store.users.exists("bob")
    assert await store.users.warm() == 0  # all there already
    store.users.forget()  # an account change: the database answers again
    assert (await store.users.get("bob")).username == "Renamed"


@pytest_twisted.ensureDeferred
async def test_warm_fills_at_most_the_cache_and_keeps_what_a_login_cached(
    store, sql, db_path
):
    users = UserStore(store.pool, reads=store.reads, cache_size=2)
    for uid in ("alice", "bob", "carol"):
        await store.users.create(uid, uid.title(), "a2V5")
    assert (await users.get("bob")).username == "Bob"
    rename(sql, db_path, "bob", "Renamed")
    assert await users.warm() == 1  # one place left; bob is not read again
    assert (await users.get("bob")).username == "Bob"
    cached = [u for u in ("alice", "carol") if u in users._cache]
    assert len(cached) == 1
    rename(sql, db_path, cached[0], "Renamed")
    assert (await users.get(cached[0])).username != "Renamed"


@pytest_twisted.ensureDeferred
async def test_a_read_begun_before_an_account_change_is_not_cached(store, sql, db_path):
    """What was read before the change may be the account as it was (the key
    a rotation replaced, the status before a ban)."""
    await store.users.create("alice", "Alice", "a2V5")
    warming = Deferred.fromCoroutine(store.users.warm())
    lookup = Deferred.fromCoroutine(store.users.get("alice"))
    store.users.forget()  # both reads are on the database thread still
    assert await warming is None  # discarded, not "nothing to add"
    assert (await lookup).username == "Alice"  # answered, not kept
    rename(sql, db_path, "alice", "Renamed")
    assert (await store.users.get("alice")).username == "Renamed"
