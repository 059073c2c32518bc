"""ApiStore on a real SQLite file."""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted

from dkserver.store import StoreError, TooManyApis
from dkserver.store import apis as api_sql


def set_clock(store, ns: int) -> None:
    store.apis._clock_ns = lambda: ns


@pytest_twisted.ensureDeferred
async def test_upsert_inserts_then_updates_one_row(store, sql, db_path):
    await store.users.create("alice", "Alice", "a2V5")
    set_clock(store, 1_000_000_000_000_000_000)
    await store.apis.upsert("alice", "weather", ["a.pdf", "b ☕"], "open", 10)
    set_clock(store, 1_000_000_000_500_000_000)
    await store.apis.upsert("alice", "weather", ["c"], "", 10)
    (api,) = await store.apis.for_user("alice")
    assert (api.name, api.documents, api.policy) == ("weather", ["c"], "")
    assert api.created_at == "2001-09-09T01:46:40Z"
    assert api.updated_at == "2001-09-09T01:46:40.5Z"
    assert sql(db_path, "SELECT documents, policy FROM user_apis") == [('["c"]', "")]


@pytest_twisted.ensureDeferred
async def test_policy_with_nul_and_marker_round_trips(store):
    """PostgreSQL text cannot hold U+0000: stored escaped, read as sent."""
    await store.users.create("alice", "Alice", "a2V5")
    for policy in ("no\x00nul", "\uffff first", "\uffff0\x00"):
        await store.apis.upsert("alice", "w", ["d\x00"], policy, 10)
        (api,) = await store.apis.for_user("alice")
        assert (api.documents, api.policy) == (["d\x00"], policy)
        assert [a.policy for a in await store.apis.everyone()] == [policy]


@pytest_twisted.ensureDeferred
async def test_unchanged_upsert_keeps_updated_at(store):
    await store.users.create("alice", "Alice", "a2V5")
    set_clock(store, 1_000_000_000_000_000_000)
    await store.apis.upsert("alice", "w", [], "p", 10)
    set_clock(store, 1_100_000_000_000_000_000)
    await store.apis.upsert("alice", "w", [], "p", 10)
    (api,) = await store.apis.for_user("alice")
    assert api.updated_at == "2001-09-09T01:46:40Z"


@pytest_twisted.ensureDeferred
async def test_limit_refuses_new_names_but_allows_updates(store):
    await store.users.create("alice", "Alice", "a2V5")
    for i in range(3):
        await store.apis.upsert("alice", f"api{i}", [], "", 3)
    with pytest.raises(TooManyApis):
        await store.apis.upsert("alice", "one-more", [], "", 3)
    await store.apis.upsert("alice", "api1", ["x"], "", 3)
    assert [a.name for a in await store.apis.for_user("alice")] == [
        "api0",
        "api1",
        "api2",
    ]


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_everyone_newest_first_skipping_unknown_owners(store, sql, db_path):
    await store.users.create("alice", "Alice", "a2V5")
    await store.users.create("bob", "Bob", "a2V5")
    set_clock(store, 1_000_000_000_000_000_000)
    await store.apis.upsert("bob", "old", [], "", 10)
    set_clock(store, 1_000_000_005_000_000_000)
    await store.apis.upsert("alice", "new", [], "", 10)
    # the original never enforced the foreign key
    sql(
        db_path,
        "INSERT INTO user_apis (user_id, api_name, documents, policy)"
        " VALUES ('ghost', 'stray', '', '')",
    )
    got = await store.apis.everyone()
    assert [(a.username, a.name) for a in got] == [("Alice", "new"), ("Bob", "old")]


@pytest.mark.parametrize(
    "documents, expected",
    [
        (None, []),
        ("", []),
        ("{broken", []),
        ('{"datasets": {}}', []),
        ('["a", 2]', []),
        ('["a", "b"]', ["a", "b"]),
    ],
)
@pytest_twisted.ensureDeferred
async def test_rows_the_original_wrote_read_leniently(
    store, sql, db_path, documents, expected
):
    await store.users.create("alice", "Alice", "a2V5")
    sql(
        db_path,
        "INSERT INTO user_apis (user_id, api_name, documents, policy, created_at,"
        " updated_at) VALUES ('alice', 'legacy', ?, NULL, '2026-11-26 01:45:42',"
        " 'garbage')",
        (documents,),
    )
    (api,) = await store.apis.for_user("alice")
    assert (api.documents, api.policy) == (expected, "")
    assert api.created_at == "2026-11-26T01:45:42Z"
    assert api.updated_at == "0001-01-01T00:00:00Z"


@pytest_twisted.ensureDeferred
async def test_apis_of_unknown_user_are_refused(store):
    with pytest.raises(StoreError):
        await store.apis.upsert("ghost", "w", [], "", 10)


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_upsert_path_uses_the_user_name_index(store, db_path):
    await store.users.create("alice", "Alice", "a2V5")
    conn = sqlite3.connect(db_path)
    try:
        for statement, params in (
            (api_sql.COUNT_OWN, ("alice",)),
            (api_sql.EXISTS_ONE, ("alice", "w")),
        ):
            rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
            text = " | ".join(r[-1] for r in rows)
            assert "user_apis_user_name" in text and "SCAN" not in text, text
    finally:
        conn.close()
