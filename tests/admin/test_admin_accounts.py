"""``dkserver user ban|unban|delete|rotate-key``, ``token revoke|rotate-secret``
and ``invite create|list|revoke`` through the real entry point, on both
backends: what they write, and their refusals (one line, exit 2, no
traceback).  What a running server makes of it: tests/reliability/
test_accounts_daemon.py and tests/cluster/test_cluster_revocation.py."""

from __future__ import annotations

import argparse
import base64

import pytest
from nacl.signing import SigningKey

from dkserver.admin import context
from dkserver.auth.secret import parse_previous, previous_path
from dkserver.store.accounts import create_invite_txn, list_invites_txn, revoked_txn
from tests.admin.admincli import dkserver, seed, target_database

pytestmark = pytest.mark.both_backends

KEY = base64.b64encode(bytes(SigningKey.generate().verify_key)).decode()


@pytest.fixture
def db(backend, tmp_path, request) -> str:
    target = target_database(backend, tmp_path, request)
    seed(target, [("alice", "Alice", KEY), ("bob", "Bob", KEY)])
    return target


def read(db: str, func):
    with (
        context.open_database(argparse.Namespace(db=db)) as admin,
        admin.transaction() as txn,
    ):
        return func(txn)


@pytest.mark.parametrize(
    "args",
    [
        ("user", "ban", "nobody"),
        ("user", "unban", "nobody"),
        ("user", "delete", "nobody"),
        ("token", "revoke", "nobody"),
        ("user", "rotate-key", "nobody", KEY),
    ],
)
def test_unknown_user_is_named_with_exit_2(db, args):
    result = dkserver(*args, "--db", db)
    assert result.rc == 2, result
    line = result.one_error_line(f"dkserver {args[0]} {args[1]}: ")
    assert "no user 'nobody'" in line
    assert read(db, revoked_txn) == []


@pytest.mark.parametrize(
    ("args", "prefix"),
    [
        (("user", "rotate-key", "alice", "bm90IGEga2V5"), "dkserver user rotate-key"),
        (
            ("token", "rotate-secret", "--grace", "soon"),
            "dkserver token rotate-secret: error: argument --grace: 'soon' is not",
        ),
        (
            ("invite", "create", "--uses", "0"),
            "dkserver invite create: error: argument --uses: must be from 1",
        ),
        (
            ("invite", "create", "--expires=-1d"),
            "dkserver invite create: error: argument --expires: '-1d' is not",
        ),
        (("invite", "revoke", "no-such-code"), "dkserver invite revoke"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(db, args, prefix):
    result = dkserver(*args, "--db", db)
    assert result.rc == 2, result
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert result.err.startswith(prefix), result.err


def test_ban_unban_delete_and_revoke_write_the_account_rows(db):
    assert dkserver("user", "ban", "alice", "--db", db).rc == 0
    again = dkserver("user", "ban", "alice", "--db", db, "--json").json()
    assert again == {"user_id": "alice", "status": "banned", "before": "banned"}
    rows = {r.user_id: r for r in read(db, revoked_txn)}
    assert rows["alice"].status == "banned"
    assert dkserver("user", "unban", "alice", "--db", db).out.startswith(
        "user alice is active"
    )
    assert dkserver("token", "revoke", "bob", "--db", db).rc == 0
    deleted = dkserver("user", "delete", "bob", "--db", db, "--json").json()
    assert deleted["status"] == "deleted"
    rows = {r.user_id: r for r in read(db, revoked_txn)}
    assert (rows["alice"].status, rows["bob"].status) == ("active", "deleted")
    assert rows["alice"].tokens_valid_after_ms is not None
    refused = dkserver("user", "unban", "bob", "--db", db)
    assert refused.rc == 2 and "deleted" in refused.one_error_line("dkserver user")
    refused = dkserver("user", "rotate-key", "bob", KEY, "--db", db)
    assert refused.rc == 2 and "deleted" in refused.err


def test_invites_are_listed_by_id_and_kept_hashed(db):
    made = dkserver("invite", "create", "--uses", "3", "--db", db, "--json").json()
    assert made["uses"] == 3 and len(made["code"]) >= 20
    listed = dkserver("invite", "list", "--db", db, "--json").json()["invites"]
    assert [(i["id"], i["uses_left"], i["usable"]) for i in listed] == [
        (made["id"], 3, True)
    ]
    stored = read(db, list_invites_txn)
    assert made["code"] not in repr(stored)
    assert dkserver("invite", "revoke", made["code"], "--db", db).rc == 0
    listed = dkserver("invite", "list", "--db", db, "--json").json()["invites"]
    assert listed[0]["revoked"] is True and listed[0]["usable"] is False


def test_a_code_that_begins_with_a_dash_is_revoked_after_double_dash(db):
    """Older versions made such codes (1 in 64); argparse reads ``-x`` as an
    option, so the code goes after ``--``, as the help says."""
    with context.open_database(argparse.Namespace(db=db)) as admin:
        with admin.transaction() as txn:
            create_invite_txn(txn, "-dash-first-code-0123", 1, 2**62, 0)
    assert dkserver("invite", "revoke", "-dash-first-code-0123", "--db", db).rc == 2
    assert (
        dkserver("invite", "revoke", "--db", db, "--", "-dash-first-code-0123").rc == 0
    )
    listed = dkserver("invite", "list", "--db", db, "--json").json()["invites"]
    assert [i["revoked"] for i in listed] == [True]


def test_rotate_secret_refuses_jwt_secret_from_the_environment(db):
    result = dkserver("token", "rotate-secret", "--db", db, JWT_SECRET="x" * 32)
    assert result.rc == 2
    assert "JWT_SECRET is set" in result.one_error_line("dkserver token rotate-secret")


def test_rotate_secret_file_keeps_the_old_secret_for_the_grace(db, tmp_path):
    secret_file = tmp_path / "jwt-secret"
    old = "ab" * 32
    secret_file.write_text(old + "\n")
    secret_file.chmod(0o600)
    result = dkserver(
        "token",
        "rotate-secret",
        "--grace",
        "2h",
        "--jwt-secret-file",
        str(secret_file),
        "--db",
        db,
    )
    assert result.rc == 0, result
    new = secret_file.read_text().strip()
    assert len(new) == 64 and new != old
    previous_file = previous_path(str(secret_file))
    previous = parse_previous(open(previous_file).read(), "test")
    assert [s.hex() for s, _ in previous] == [old]
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"
