"""End to end: /user/trackers, /trackers, /user/apis and /apis.

PROTOCOL.md, "Endpoints of the current original server": the original's JSON
shapes (empty fields omitted, ``tracker_documents`` always present, RFC 3339
times), its plain-text success bodies, replace-all and upsert semantics; and
dkserver's limits, per-user write rate limit and JSON errors for bad input.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from dkserver import timestamps
from dkserver.web import trackers as limits
from tests.support.client import Identity, get, post_json, register_and_login
from tests.support.db import db_rows
from tests.support.server import start_server, stop_server

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

UPDATED = "Tracker list updated successfully"
SAVED = "API saved successfully"

STEPS = {
    "tracker_description": "counts steps ☕",
    "tracker_version": "1.2.3",
    "tracker_documents": {
        "datasets": {"steps": "steps.csv", "quote": "a \"b\" 'c' \\ ; DROP TABLE"},
        "templates": {"report": "# {{steps}}\n\u0000 tab\t"},
    },
}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_json_error(code: int, body, status: int) -> None:
    assert code == status, (code, body)
    assert isinstance(body, dict) and body.get("error") is True, body
    assert isinstance(body.get("message"), str) and body["message"], body


def assert_time(text: str) -> None:
    assert text.endswith("Z") and "T" in text, text
    timestamps.parse(text)


@pytest_twisted.ensureDeferred
async def test_trackers_post_then_get_round_trips_in_the_originals_shape(server):
    token = await register_and_login(server, Identity("alice", "Alice A."))
    body = {"user_id": "whoever", "trackers": {"steps": STEPS, "bare": {}}}
    assert await post_json(server, "/user/trackers", body, auth(token)) == (
        200,
        UPDATED,
    )

    code, got = await get(server, "/user/trackers", auth(token))
    assert code == 200
    by_name = {t["tracker_name"]: t for t in got}
    assert set(by_name) == {"steps", "bare"}
    steps = by_name["steps"]
    assert list(steps) == [
        "id",
        "user_id",
        "tracker_name",
        "tracker_description",
        "tracker_version",
        "tracker_documents",
        "created_at",
        "updated_at",
    ]
    assert steps["user_id"] == "alice"  # the token decides, not the body
    assert isinstance(steps["id"], int)
    for field in ("tracker_description", "tracker_version", "tracker_documents"):
        assert steps[field] == STEPS[field]
    assert_time(steps["created_at"])
    assert_time(steps["updated_at"])
    # empty fields are omitted, tracker_documents is always there
    assert set(by_name["bare"]) == {
        "id",
        "user_id",
        "tracker_name",
        "tracker_documents",
        "created_at",
        "updated_at",
    }
    assert by_name["bare"]["tracker_documents"] == {}


@pytest_twisted.ensureDeferred
async def test_trackers_replace_all_and_public_list_newest_first(server):
    alice = await register_and_login(server, Identity("alice", "Alice"))
    bob = await register_and_login(server, Identity("bob", "Bob"))
    assert await get(server, "/trackers") == (200, [])
    assert await get(server, "/user/trackers", auth(bob)) == (200, [])

    await post_json(server, "/user/trackers", {"trackers": {"a": {}}}, auth(alice))
    await post_json(server, "/user/trackers", {"trackers": {"b": {}}}, auth(bob))
    code, body = await post_json(
        server,
        "/user/trackers",
        {"trackers": {"a": {"tracker_version": "2"}, "c": {}}},
        auth(alice),
    )
    assert (code, body) == (200, UPDATED)
    _, mine = await get(server, "/user/trackers", auth(alice))
    assert sorted(t["tracker_name"] for t in mine) == ["a", "c"]

    code, public = await get(server, "/trackers")
    assert code == 200
    assert [(t["username"], t["tracker_name"]) for t in public][-1] == ("Bob", "b")
    assert {(t["user_id"], t["tracker_name"]) for t in public} == {
        ("alice", "a"),
        ("alice", "c"),
        ("bob", "b"),
    }
    stamps = [timestamps.parse(t["updated_at"]).unix_nanos for t in public]
    assert stamps == sorted(stamps, reverse=True)
    # one row per (user, name) on disk
    assert db_rows(
        server,
        "SELECT user_id, tracker_name FROM user_trackers"
        " ORDER BY user_id, tracker_name",
    ) == [("alice", "a"), ("alice", "c"), ("bob", "b")]


@pytest_twisted.ensureDeferred
async def test_unchanged_tracker_list_keeps_updated_at(server):
    token = await register_and_login(server, Identity("alice"))
    body = {"trackers": {"steps": STEPS}}
    await post_json(server, "/user/trackers", body, auth(token))
    _, first = await get(server, "/user/trackers", auth(token))
    for _ in range(3):
        assert await post_json(server, "/user/trackers", body, auth(token)) == (
            200,
            UPDATED,
        )
    assert await get(server, "/user/trackers", auth(token)) == (200, first)


@pytest_twisted.ensureDeferred
async def test_apis_upsert_get_and_public_list(server):
    alice = await register_and_login(server, Identity("alice", "Alice"))
    bob = await register_and_login(server, Identity("bob", "Bob"))
    assert await get(server, "/apis") == (200, [])
    api = {"api_name": "weather", "documents": ["a.pdf", "b ☕"], "policy": "open"}
    assert await post_json(server, "/user/apis", api, auth(alice)) == (200, SAVED)
    assert await post_json(
        server, "/user/apis", {"api_name": "weather", "documents": ["c"]}, auth(alice)
    ) == (200, SAVED)
    assert await post_json(server, "/user/apis", {"api_name": "maps"}, auth(bob)) == (
        200,
        SAVED,
    )

    code, mine = await get(server, "/user/apis", auth(alice))
    assert code == 200 and len(mine) == 1
    (weather,) = mine
    assert list(weather) == [
        "id",
        "user_id",
        "api_name",
        "documents",
        "created_at",
        "updated_at",
    ]  # policy now empty: omitted
    assert (weather["user_id"], weather["documents"]) == ("alice", ["c"])

    code, public = await get(server, "/apis")
    assert code == 200
    assert [(a["username"], a["api_name"]) for a in public] == [
        ("Bob", "maps"),
        ("Alice", "weather"),
    ]
    assert "documents" not in public[0] and "policy" not in public[0]


@pytest_twisted.ensureDeferred
async def test_missing_invalid_or_unknown_users_token_is_401_json(server):
    # a correctly signed token for a user that is not registered
    ghost = {"Authorization": f"Bearer {server.service.tokens.issue('ghost')}"}
    for path in ("/user/trackers", "/user/apis"):
        for headers in (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": "x"},
            ghost,
        ):
            assert_json_error(*await get(server, path, headers), 401)
            assert_json_error(
                *await post_json(server, path, {"api_name": "x"}, headers), 401
            )


HUGE = "x" * (limits.MAX_DESCRIPTION + 1)

BAD_TRACKER_BODIES = [
    b"{not json",
    b"",
    b"[]",
    b'"trackers"',
    b'{"trackers": {}}',
    b'{"trackers": null}',
    b'{"trackers": []}',
    b'{"user_id": 7, "trackers": {"a": {}}}',
    b'{"trackers": {"a": 1}}',
    b'{"trackers": {"a": null}}',
    b'{"trackers": {"": {}}}',
    b'{"trackers": {"bad\\nname": {}}}',
    b'{"trackers": {"a": {"tracker_description": 5}}}',
    b'{"trackers": {"a": {"tracker_version": ["1"]}}}',
    b'{"trackers": {"a": {"tracker_documents": "x"}}}',
    b'{"trackers": {"a": {"tracker_documents": {"datasets": ["x"]}}}}',
    b'{"trackers": {"a": {"tracker_documents": {"datasets": {"k": 1}}}}}',
    b'{"trackers": {"a": {"tracker_documents": {"templates": {"k": {"n": "x"}}}}}}',
    b'{"trackers": {"a": {"tracker_documents": {"templates": {"k": null}}}}}',
    b'{"trackers": {"a": {"tracker_description": "\\ud800"}}}',
    json.dumps({"trackers": {"a": {"tracker_description": HUGE}}}).encode(),
    json.dumps({"trackers": {"x" * (limits.MAX_NAME + 1): {}}}).encode(),
    json.dumps(
        {"trackers": {f"t{i}": {} for i in range(limits.MAX_TRACKERS + 1)}}
    ).encode(),
    json.dumps(
        {
            "trackers": {
                "a": {
                    "tracker_documents": {
                        "datasets": {
                            str(i): "v" for i in range(limits.MAX_MAP_ENTRIES + 1)
                        }
                    }
                }
            }
        }
    ).encode(),
    json.dumps(
        {
            "trackers": {
                "a": {
                    "tracker_documents": {
                        "templates": {"big": "y" * limits.MAX_DOCUMENTS_BYTES}
                    }
                }
            }
        }
    ).encode(),
    b'{"trackers": {"a": ' + b'{"x": ' * 5000 + b"1" + b"}" * 5001 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
]


@pytest_twisted.ensureDeferred
async def test_bad_tracker_bodies_are_400_json_and_change_nothing(backend_config):
    server = await start_server(backend_config(write_burst=1000))
    try:
        token = await register_and_login(server, Identity("alice"))
        await post_json(
            server, "/user/trackers", {"trackers": {"keep": {}}}, auth(token)
        )
        for raw in BAD_TRACKER_BODIES:
            code, body = await post_json(server, "/user/trackers", raw, auth(token))
            assert_json_error(code, body, 400)
        _, mine = await get(server, "/user/trackers", auth(token))
        assert [t["tracker_name"] for t in mine] == ["keep"]
    finally:
        await stop_server(server)


BAD_API_BODIES = [
    b"{nope",
    b"[]",
    b"{}",
    b'{"api_name": ""}',
    b'{"api_name": 5}',
    b'{"api_name": null}',
    b'{"api_name": "a", "documents": "x"}',
    b'{"api_name": "a", "documents": [1]}',
    b'{"api_name": "a", "documents": [["nested"]]}',
    b'{"api_name": "a", "documents": {"k": "v"}}',
    b'{"api_name": "a", "policy": {"p": 1}}',
    json.dumps({"api_name": "a", "policy": "p" * (limits.MAX_POLICY + 1)}).encode(),
    json.dumps(
        {"api_name": "a", "documents": ["d"] * (limits.MAX_API_DOCUMENTS + 1)}
    ).encode(),
    json.dumps(
        {"api_name": "a", "documents": ["d" * (limits.MAX_API_DOCUMENT + 1)]}
    ).encode(),
    json.dumps({"api_name": "n" * (limits.MAX_NAME + 1)}).encode(),
]


@pytest_twisted.ensureDeferred
async def test_bad_api_bodies_are_400_json(backend_config):
    server = await start_server(backend_config(write_burst=1000))
    try:
        token = await register_and_login(server, Identity("alice"))
        for raw in BAD_API_BODIES:
            code, body = await post_json(server, "/user/apis", raw, auth(token))
            assert_json_error(code, body, 400)
        assert await get(server, "/user/apis", auth(token)) == (200, [])
    finally:
        await stop_server(server)


HOSTILE = [
    "'; DROP TABLE user_trackers; --",
    'x" OR 1=1 --',
    "%s %d {} {{}} \\x00",
    "<script>alert(1)</script>",
    "😀 \u202e RTL",
    " leading and trailing ",
]


@pytest_twisted.ensureDeferred
async def test_hostile_but_valid_values_round_trip_exactly(backend_config):
    server = await start_server(backend_config(write_burst=1000))
    try:
        token = await register_and_login(server, Identity("alice"))
        trackers = {
            value: {
                "tracker_description": value + "\u0000",
                "tracker_version": value[:100],
                "tracker_documents": {
                    "datasets": {value: value},
                    "templates": {"k" * limits.MAX_MAP_KEY: value * 50},
                },
            }
            for value in HOSTILE
        }
        code, body = await post_json(
            server, "/user/trackers", {"trackers": trackers}, auth(token)
        )
        assert (code, body) == (200, UPDATED)
        _, mine = await get(server, "/user/trackers", auth(token))
        assert {t["tracker_name"]: t for t in mine}.keys() == trackers.keys()
        for t in mine:
            sent = trackers[t["tracker_name"]]
            for field in ("tracker_description", "tracker_version"):
                assert t[field] == sent[field]
            assert t["tracker_documents"] == sent["tracker_documents"]

        for value in HOSTILE:
            api = {"api_name": value, "documents": [value, ""], "policy": value}
            assert await post_json(server, "/user/apis", api, auth(token)) == (
                200,
                SAVED,
            )
        _, apis = await get(server, "/user/apis", auth(token))
        assert [(a["api_name"], a["documents"], a["policy"]) for a in apis] == [
            (v, [v, ""], v) for v in HOSTILE
        ]
        assert db_rows(server, "SELECT COUNT(*) FROM user_trackers") == [
            (len(HOSTILE),)
        ]
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_api_count_limit_is_409_and_updates_still_work(backend_config):
    server = await start_server(backend_config(write_burst=1000))
    try:
        token = await register_and_login(server, Identity("alice"))
        for i in range(limits.MAX_APIS):
            code, _ = await post_json(
                server, "/user/apis", {"api_name": f"api{i}"}, auth(token)
            )
            assert code == 200
        code, body = await post_json(
            server, "/user/apis", {"api_name": "one-too-many"}, auth(token)
        )
        assert_json_error(code, body, 409)
        assert await post_json(
            server, "/user/apis", {"api_name": "api0", "policy": "p"}, auth(token)
        ) == (200, SAVED)
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_413_json(server):
    token = await register_and_login(server, Identity("alice"))
    raw = b'{"trackers": {"a": {"tracker_description": "' + b"x" * (2 << 20) + b'"}}}'
    code, body = await post_json(server, "/user/trackers", raw, auth(token))
    assert_json_error(code, body, 413)


@pytest.mark.parametrize("path", ["/user/trackers", "/user/apis"])
@pytest_twisted.ensureDeferred
async def test_rest_writes_are_rate_limited_per_user(backend_config, path):
    server = await start_server(backend_config(write_rate=0.001, write_burst=3))
    try:
        alice = await register_and_login(server, Identity("alice"))
        bob = await register_and_login(server, Identity("bob"))
        body = {"trackers": {"a": {}}, "api_name": "a"}
        for _ in range(3):
            code, _ = await post_json(server, path, body, auth(alice))
            assert code == 200
        code, answer = await post_json(server, path, body, auth(alice))
        assert_json_error(code, answer, 429)
        # another user's bucket is separate, and reads are not limited
        code, _ = await post_json(server, path, body, auth(bob))
        assert code == 200
        code, _ = await get(server, path, auth(alice))
        assert code == 200
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_wrong_methods_are_405_json(server):
    for path in ("/trackers", "/apis"):
        code, body = await post_json(server, path, {})
        assert_json_error(code, body, 405)
