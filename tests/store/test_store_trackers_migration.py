"""Schema version 5 on the original's database: its ``user_trackers`` and
``user_apis`` rows (duplicates included, as its check-then-insert could write
them) survive, collapse to one row per name, and become unique."""

from __future__ import annotations

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor

from dkserver.store import Store, TrackerInfo
from dkserver.store.schema import LATEST_VERSION

#: About migrating the original server's SQLite tables.
pytestmark = pytest.mark.sqlite_only

TRACKER_INSERT = (
    "INSERT INTO user_trackers (user_id, tracker_name, tracker_description,"
    " tracker_version, tracker_documents, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
API_INSERT = (
    "INSERT INTO user_apis (user_id, api_name, documents, policy, created_at,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?)"
)

# As the Go server writes them: time.Now() through go-sqlite3 (local offset,
# trimmed nanoseconds), "" for empty documents; and one row from a
# CURRENT_TIMESTAMP default (naive UTC).
ORIGINAL_TRACKERS = [
    # id 1: older duplicate of alice/steps (01:00 -03:00 = 04:00 UTC)
    ("alice", "steps", "v1 text", "1.0", "", "2026-11-26 01:00:00.5-03:00",
     "2026-11-26 01:00:00.5-03:00"),
    # id 2: the newest alice/steps (05:00 UTC), written with another offset
    ("alice", "steps", "v2 text", "2.0",
     '{"datasets":{"d":"d.csv"},"templates":{"t":"T"}}',
     "2026-11-26 06:00:00.25+01:00", "2026-11-26 06:00:00.25+01:00"),
    # id 3: text-wise "later" but an earlier instant (03:30 UTC)
    ("alice", "steps", "stale", "0.9", "", "2026-11-26 03:30:00+00:00",
     "2026-11-26 03:30:00+00:00"),
    ("bob", "steps", None, None, None, "2026-11-25 10:00:00",
     "2026-11-25 10:00:00"),
    ("alice", "sleep", "", "", "not json", "2026-11-20 10:00:00",
     "2026-11-20 10:00:00"),
]  # fmt: skip

ORIGINAL_APIS = [
    ("alice", "weather", '["old.pdf"]', "closed", "2026-11-26 01:00:00-03:00",
     "2026-11-26 01:00:00-03:00"),
    ("alice", "weather", '["new.pdf"]', "open", "2026-11-26 02:00:00-03:00",
     "2026-11-26 02:00:00-03:00"),
    # same updated_at: the higher id wins
    ("carol", "maps", '["a"]', "", "2026-11-24 00:00:00", "2026-11-24 00:00:00"),
    ("carol", "maps", '["b"]', "", "2026-11-24 00:00:00", "2026-11-24 00:00:00"),
]  # fmt: skip


def seed(path: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executemany(TRACKER_INSERT, ORIGINAL_TRACKERS)
        conn.executemany(API_INSERT, ORIGINAL_APIS)
        conn.commit()
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_original_rows_collapse_to_newest_and_names_become_unique(
    original_db, sql
):
    seed(original_db)
    store = await Store.open(original_db, reactor)
    try:
        alice = {t.name: t for t in await store.trackers.for_user("alice")}
        assert set(alice) == {"steps", "sleep"}
        steps = alice["steps"]
        assert steps.id == 2
        assert steps.info == TrackerInfo("v2 text", "2.0", {"d": "d.csv"}, {"t": "T"})
        assert steps.updated_at == "2026-11-26T05:00:00.25Z"
        assert alice["sleep"].info == TrackerInfo()
        (bobs,) = await store.trackers.for_user("bob")
        assert bobs.info == TrackerInfo() and bobs.created_at == "2026-11-25T10:00:00Z"

        everyone = await store.trackers.everyone()
        assert [(t.user_id, t.name) for t in everyone] == [
            ("alice", "steps"),
            ("bob", "steps"),
            ("alice", "sleep"),
        ]

        (weather,) = await store.apis.for_user("alice")
        assert (weather.documents, weather.policy) == (["new.pdf"], "open")
        (maps,) = await store.apis.for_user("carol")
        assert maps.documents == ["b"]

        # the desktop app's next post updates the surviving row in place
        assert await store.trackers.replace("alice", {"steps": TrackerInfo("v3")})
        (again,) = await store.trackers.for_user("alice")
        assert (again.id, again.info.description) == (2, "v3")
    finally:
        await store.close()

    assert sql(original_db, "PRAGMA user_version") == [(LATEST_VERSION,)]
    # stored times are now UTC in one fixed-width form
    assert sql(original_db, "SELECT created_at FROM user_trackers WHERE id = 4") == [
        ("2026-11-25 10:00:00.000000000+00:00",)
    ]
    with pytest.raises(sqlite3.IntegrityError):
        sql(original_db, TRACKER_INSERT, ORIGINAL_TRACKERS[3])
    with pytest.raises(sqlite3.IntegrityError):
        sql(original_db, API_INSERT, ORIGINAL_APIS[0])
    assert sql(original_db, "PRAGMA integrity_check") == [("ok",)]


@pytest_twisted.ensureDeferred
async def test_unreadable_legacy_time_survives_and_counts_as_oldest(original_db, sql):
    for row in (
        ("alice", "odd", "", "", "", "yesterday", None),
        ("alice", "dup", "kept", "", "", "2026-01-01 00:00:00", "2026-01-01 00:00:00"),
        ("alice", "dup", "dropped", "", "", "soon", "soon"),
        ("bob", "x", "", "", "", "2020-01-01 00:00:00", "2020-01-01 00:00:00"),
    ):
        sql(original_db, TRACKER_INSERT, row)
    store = await Store.open(original_db, reactor)
    try:
        mine = {t.name: t for t in await store.trackers.for_user("alice")}
        assert mine["dup"].info.description == "kept"
        odd = mine["odd"]
        assert (odd.created_at, odd.updated_at) == ("0001-01-01T00:00:00Z",) * 2
        everyone = await store.trackers.everyone()
        assert [t.name for t in everyone] == ["dup", "x", "odd"]
    finally:
        await store.close()
    assert sql(
        original_db, "SELECT created_at FROM user_trackers WHERE tracker_name = 'odd'"
    ) == [("yesterday",)]


@pytest_twisted.ensureDeferred
async def test_database_without_the_tables_gets_the_originals_definitions(db_path, sql):
    # a dkserver database from before version 5 (built at v3, tables dropped)
    store = await Store.open(db_path, reactor)
    await store.close()
    sql(db_path, "DROP TABLE user_trackers")
    sql(db_path, "DROP TABLE user_apis")
    sql(db_path, "PRAGMA user_version=3")

    store = await Store.open(db_path, reactor)
    try:
        await store.users.create("alice", "Alice", "a2V5")
        await store.trackers.replace("alice", {"x": TrackerInfo()})
        await store.apis.upsert("alice", "y", [], "", 10)
    finally:
        await store.close()
    cols = [r[1] for r in sql(db_path, "PRAGMA table_info(user_trackers)")]
    assert cols == [
        "id",
        "user_id",
        "tracker_name",
        "tracker_description",
        "tracker_version",
        "tracker_documents",
        "created_at",
        "updated_at",
    ]
    cols = [r[1] for r in sql(db_path, "PRAGMA table_info(user_apis)")]
    assert cols == [
        "id",
        "user_id",
        "api_name",
        "documents",
        "policy",
        "created_at",
        "updated_at",
    ]
    fks = sql(db_path, "PRAGMA foreign_key_list(user_trackers)")
    assert [(r[2], r[3], r[4]) for r in fks] == [("users", "user_id", "user_id")]
