"""TrackerStore on a real SQLite file: replace-all, change detection, legacy rows,
and the query plans of the desktop app's every-10-seconds path."""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted

from dkserver.store import StoreError, TrackerInfo
from dkserver.store import trackers as tracker_sql

ALPHA = TrackerInfo(
    "counts steps", "1.0", {"steps": "steps.csv"}, {"report": "# {{steps}} ☕"}
)
BETA = TrackerInfo("", "2", {}, {})


def set_clock(store, ns: int) -> None:
    store.trackers._clock_ns = lambda: ns


async def users(store, *names: str) -> None:
    for name in names:
        await store.users.create(name, name.title(), "a2V5")


@pytest_twisted.ensureDeferred
async def test_replace_inserts_then_reads_back_exactly(store):
    await users(store, "alice")
    set_clock(store, 1_764_000_000_123_000_000)
    assert await store.trackers.replace("alice", {"alpha": ALPHA, "beta": BETA})
    got = await store.trackers.for_user("alice")
    assert [(t.name, t.info) for t in got] == [("alpha", ALPHA), ("beta", BETA)]
    assert got[0].user_id == "alice" and got[0].username is None
    assert got[0].created_at == got[0].updated_at == "2025-11-24T16:00:00.123Z"


@pytest_twisted.ensureDeferred
async def test_nul_and_marker_in_free_text_round_trip_and_compare_unchanged(store):
    """PostgreSQL text cannot hold U+0000: stored escaped, read back as sent,
    and an unchanged list is still recognised as unchanged."""
    await users(store, "alice")
    odd = TrackerInfo("a\x00b", "\uffff\x00", {"d": "x\x00"}, {})
    assert await store.trackers.replace("alice", {"odd": odd})
    assert [(t.name, t.info) for t in await store.trackers.for_user("alice")] == [
        ("odd", odd)
    ]
    assert [t.info for t in await store.trackers.everyone()] == [odd]
    assert not await store.trackers.replace("alice", {"odd": odd})


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_unchanged_list_writes_nothing_and_keeps_updated_at(store, db_path):
    await users(store, "alice")
    set_clock(store, 1_000_000_000_000_000_000)
    assert await store.trackers.replace("alice", {"alpha": ALPHA})
    before = await store.trackers.for_user("alice")
    # data_version moves when another connection commits a change
    watcher = sqlite3.connect(db_path)
    try:
        version = watcher.execute("PRAGMA data_version").fetchone()
        set_clock(store, 2_000_000_000_000_000_000)
        # an equal value built separately (another dict order) is "unchanged"
        same = TrackerInfo(
            "counts steps", "1.0", {"steps": "steps.csv"}, {"report": "# {{steps}} ☕"}
        )
        assert not await store.trackers.replace("alice", {"alpha": same})
        assert watcher.execute("PRAGMA data_version").fetchone() == version
        assert await store.trackers.replace("alice", {"alpha": BETA})
        assert watcher.execute("PRAGMA data_version").fetchone() != version
    finally:
        watcher.close()
    assert before[0].updated_at == "2001-09-09T01:46:40Z"


@pytest_twisted.ensureDeferred
async def test_replace_updates_changed_deletes_unlisted_keeps_ids(store):
    await users(store, "alice", "bob")
    set_clock(store, 1_000_000_000_000_000_000)
    await store.trackers.replace("alice", {"alpha": ALPHA, "beta": BETA})
    await store.trackers.replace("bob", {"alpha": BETA})
    first = {t.name: t for t in await store.trackers.for_user("alice")}

    set_clock(store, 1_500_000_000_000_000_000)
    changed = TrackerInfo("new text", "1.1", {}, {"t": "x"})
    assert await store.trackers.replace("alice", {"alpha": changed, "gamma": BETA})
    now = {t.name: t for t in await store.trackers.for_user("alice")}
    assert set(now) == {"alpha", "gamma"}
    assert now["alpha"].id == first["alpha"].id
    assert now["alpha"].info == changed
    assert now["alpha"].created_at == first["alpha"].created_at
    assert now["alpha"].updated_at == "2017-07-14T02:40:00Z"
    # bob's tracker of the same name is untouched
    (bobs,) = await store.trackers.for_user("bob")
    assert bobs.info == BETA and bobs.updated_at == "2001-09-09T01:46:40Z"


@pytest_twisted.ensureDeferred
async def test_everyone_is_newest_first_with_usernames(store):
    await users(store, "alice", "bob")
    set_clock(store, 1_000_000_000_000_000_000)
    await store.trackers.replace("alice", {"old": BETA})
    set_clock(store, 1_000_000_001_000_000_000)
    await store.trackers.replace("bob", {"newer": BETA})
    set_clock(store, 1_000_000_002_000_000_000)
    await store.trackers.replace("alice", {"old": BETA, "newest": ALPHA})
    got = await store.trackers.everyone()
    assert [(t.username, t.name) for t in got] == [
        ("Alice", "newest"),
        ("Bob", "newer"),
        ("Alice", "old"),
    ]


@pytest_twisted.ensureDeferred
async def test_trackers_of_unknown_user_are_refused(store):
    with pytest.raises(StoreError):
        await store.trackers.replace("ghost", {"alpha": ALPHA})


@pytest.mark.parametrize(
    "documents, datasets, templates",
    [
        (None, {}, {}),
        ("", {}, {}),
        ("not json", {}, {}),
        ("[1, 2]", {}, {}),
        ('{"datasets": {"a": 1}, "templates": {"t": "x"}}', {}, {"t": "x"}),
        ('{"datasets": "nope"}', {}, {}),
        ('{"datasets": {"a": "b"}}', {"a": "b"}, {}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_rows_the_original_wrote_read_leniently(
    store, sql, db_path, documents, datasets, templates
):
    await users(store, "alice")
    sql(
        db_path,
        "INSERT INTO user_trackers (user_id, tracker_name, tracker_description,"
        " tracker_version, tracker_documents, created_at, updated_at)"
        " VALUES ('alice', 'legacy', NULL, NULL, ?, '2026-11-26 01:45:42',"
        " '2026-11-26 01:45:42.123456789-03:00')",
        (documents,),
    )
    (t,) = await store.trackers.for_user("alice")
    assert t.info == TrackerInfo("", "", datasets, templates)
    assert t.created_at == "2026-11-26T01:45:42Z"
    assert t.updated_at == "2026-11-26T04:45:42.123456789Z"
    # and a replace that lists it again fixes the row in place
    assert await store.trackers.replace("alice", {"legacy": ALPHA})
    (t2,) = await store.trackers.for_user("alice")
    assert t2.id == t.id and t2.info == ALPHA


@pytest_twisted.ensureDeferred
async def test_writes_empty_strings_not_null_like_the_original(store, sql, db_path):
    await users(store, "alice")
    await store.trackers.replace("alice", {"bare": TrackerInfo()})
    assert sql(
        db_path,
        "SELECT tracker_description, tracker_version, tracker_documents"
        " FROM user_trackers",
    ) == [("", "", "")]
    await store.trackers.replace("alice", {"bare": ALPHA})
    (docs,) = sql(db_path, "SELECT tracker_documents FROM user_trackers")[0]
    assert docs == (
        '{"datasets":{"steps":"steps.csv"},"templates":{"report":"# {{steps}} ☕"}}'
    )


def plan(db_path: str, statement: str, params: tuple) -> str:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()
        return " | ".join(row[-1] for row in rows)
    finally:
        conn.close()


@pytest.mark.sqlite_only
@pytest_twisted.ensureDeferred
async def test_replace_path_uses_the_user_name_index_not_a_scan(store, db_path):
    await users(store, "alice", "bob")
    await store.trackers.replace("bob", {f"t{i}": BETA for i in range(50)})
    own = plan(db_path, tracker_sql.SELECT_OWN, ("alice",))
    delete = plan(db_path, tracker_sql.DELETE_ONE, ("alice", "t1"))
    for text in (own, delete):
        assert "USING INDEX user_trackers_user_name" in text, text
        assert "SCAN" not in text, text
    print("replace-all read:", own)
    print("replace-all delete:", delete)
