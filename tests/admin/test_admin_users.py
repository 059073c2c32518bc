"""``dkserver user show`` / ``user list`` through the real entry point, on
both backends, and their refusals (one line, exit 2 or 1, no traceback)."""

from __future__ import annotations

import pytest

from tests.admin.admincli import dkserver, seed, target_database

pytestmark = pytest.mark.both_backends

USERS = [
    ("alice", "Alice", "a" * 44),
    ("bob", "Bob", "b" * 44),
    ("carol", "Carol", "c" * 44),
    ("dave", "Dave", "d" * 44),
    ("erin", "Erin", "e" * 44),
]


@pytest.fixture
def db(backend, tmp_path, request) -> str:
    target = target_database(backend, tmp_path, request)
    seed(target, USERS, pending={"bob": 3}, sessions={"bob": (2, 1)})
    return target


def test_user_show_prints_the_record_and_activity(db):
    result = dkserver("user", "show", "bob", "--db", db)
    assert result.rc == 0, result
    text = result.out
    assert "user id                  bob\n" in text
    assert "username                 Bob\n" in text
    assert f"public key               {'b' * 44}\n" in text
    assert "pending direct messages  3\n" in text
    assert "sessions                 2\n" in text
    assert "open sessions            1\n" in text


def test_user_show_json_is_one_document(db):
    doc = dkserver("user", "show", "bob", "--db", db, "--json").json()
    assert doc == {
        "user_id": "bob",
        "username": "Bob",
        "public_key": "b" * 44,
        "registered": "2023-11-14T22:13:20.000000001Z",
        "pending_direct_messages": 3,
        "sessions": 2,
        "open_sessions": 1,
        "last_session_start": "2023-11-14T22:13:20.000000001Z",
    }


def test_user_show_unknown_user_is_exit_2(db):
    result = dkserver("user", "show", "mallory", "--db", db)
    assert result.rc == 2 and result.out == ""
    assert (
        result.one_error_line("dkserver user show: ")
        == "dkserver user show: no user 'mallory'"
    )


def test_user_show_finds_the_database_through_dk_db(db):
    doc = dkserver("user", "show", "alice", "--json", DK_DB=db).json()
    assert doc["user_id"] == "alice" and doc["pending_direct_messages"] == 0


def test_user_list_pages_by_user_id(db):
    first = dkserver("user", "list", "--limit", "2", "--db", db, "--json").json()
    assert [u["user_id"] for u in first["users"]] == ["alice", "bob"]
    assert first["next_after"] == "bob"
    second = dkserver(
        "user", "list", "--limit", "2", "--after", "bob", "--db", db, "--json"
    ).json()
    assert [u["user_id"] for u in second["users"]] == ["carol", "dave"]
    last = dkserver(
        "user", "list", "--limit", "2", "--after", "dave", "--db", db, "--json"
    ).json()
    assert [u["user_id"] for u in last["users"]] == ["erin"]
    assert last["next_after"] is None
    assert last["users"][0] == {
        "user_id": "erin",
        "username": "Erin",
        "public_key": "e" * 44,
        "registered": "2023-11-14T22:13:20.000000004Z",
    }


def test_user_list_text_is_a_table_with_the_next_page_hint(db):
    result = dkserver("user", "list", "--limit", "3", "--db", db)
    assert result.rc == 0, result
    lines = result.out.splitlines()
    assert lines[0].split() == ["USER", "NAME", "REGISTERED"]
    assert [line.split()[0] for line in lines[1:4]] == ["alice", "bob", "carol"]
    assert lines[4] == "(more: --after carol)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--limit", "0"), "argument --limit: must be from 1 to 10000, got 0"),
        (("--limit", "ten"), "argument --limit: 'ten' is not a whole number"),
        (("--limit", "10001"), "argument --limit: must be from 1 to 10000"),
        (("--frobnicate",), "unrecognized arguments: --frobnicate"),
    ],
)
def test_user_list_bad_arguments_are_one_line_exit_2(db, args, message):
    result = dkserver("user", "list", "--db", db, *args)
    assert result.rc == 2 and result.out == ""
    assert message in result.one_error_line("dkserver")
