"""The original server's database with tracker and API rows it wrote (including
a duplicate its check-then-insert allowed), served by dkserver after the
in-place upgrade (or, on PostgreSQL, after ``dkserver port-db``): the desktop
app's next post lands on the surviving row."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import pytest_twisted

from tests.support.client import Identity, get, login, post_json
from tests.support.db import db_rows
from tests.support.paths import FIXTURES
from tests.support.server import make_config, start_server, stop_server

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

# As the Go server writes them: go-sqlite3's time.Time text in local time,
# "" for an empty document set, documents a JSON array.
ROWS = [
    "INSERT INTO user_trackers (user_id, tracker_name, tracker_description,"
    " tracker_version, tracker_documents, created_at, updated_at) VALUES"
    " ('alice', 'steps', 'old', '1', '', '2026-11-26 01:00:00.1-03:00',"
    "  '2026-11-26 01:00:00.1-03:00'),"
    " ('alice', 'steps', 'newest', '2', '{\"datasets\":{\"d\":\"d.csv\"}}',"
    "  '2026-11-26 01:00:00.1-03:00', '2026-11-26 02:00:00.123456789-03:00'),"
    " ('bob', 'sleep', '', '', '', '2026-11-25 12:00:00+00:00',"
    "  '2026-11-25 12:00:00+00:00')",
    "INSERT INTO user_apis (user_id, api_name, documents, policy, created_at,"
    " updated_at) VALUES ('carol', 'weather', '[\"w.pdf\"]', 'open',"
    " '2026-11-24 09:00:00-03:00', '2026-11-24 09:00:00-03:00')",
]


def copy_fixture(tmp_path):
    dest = tmp_path / "original.db"
    shutil.copyfile(FIXTURES / "original-server.db", dest)
    conn = sqlite3.connect(dest)
    try:
        for statement in ROWS:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()
    return dest


@pytest_twisted.ensureDeferred
async def test_original_tracker_and_api_rows_are_served_and_updated(
    tmp_path, from_sqlite_file
):
    db = from_sqlite_file(copy_fixture(tmp_path))
    seeds = json.loads((FIXTURES / "original-server.json").read_text())
    alice = Identity.from_seed_hex("alice", seeds["ed25519_seeds_hex"]["alice"])
    server = await start_server(make_config(tmp_path, db))
    try:
        token = await login(server, alice)
        headers = {"Authorization": f"Bearer {token}"}
        code, mine = await get(server, "/user/trackers", headers)
        assert code == 200
        assert mine == [
            {
                "id": 2,
                "user_id": "alice",
                "tracker_name": "steps",
                "tracker_description": "newest",
                "tracker_version": "2",
                "tracker_documents": {"datasets": {"d": "d.csv"}},
                "created_at": "2026-11-26T04:00:00.1Z",
                "updated_at": "2026-11-26T05:00:00.123456789Z",
            }
        ]

        code, public = await get(server, "/trackers")
        assert code == 200
        assert [(t["username"], t["tracker_name"]) for t in public] == [
            ("Alice Example", "steps"),
            ("Bob Example", "sleep"),
        ]
        assert public[1]["tracker_documents"] == {}
        assert "tracker_description" not in public[1]

        code, apis = await get(server, "/apis")
        assert code == 200
        assert apis == [
            {
                "id": 1,
                "user_id": "carol",
                "api_name": "weather",
                "documents": ["w.pdf"],
                "policy": "open",
                "created_at": "2026-11-24T12:00:00Z",
                "updated_at": "2026-11-24T12:00:00Z",
                "username": "Carol Example",
            }
        ]

        # the desktop app's next post: the surviving row is updated in place
        body = {"user_id": "alice", "trackers": {"steps": {"tracker_version": "3"}}}
        code, text = await post_json(server, "/user/trackers", body, headers)
        assert (code, text) == (200, "Tracker list updated successfully")
        assert db_rows(
            server,
            "SELECT id, tracker_version, tracker_documents FROM user_trackers"
            " WHERE user_id = 'alice'",
        ) == [(2, "3", "")]
    finally:
        await stop_server(server)
