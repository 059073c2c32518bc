"""Accounts that can be revoked, on a real ``twistd dkserver`` (issue 12,
item 4), both backends: the admin CLI runs in its own process, as an
operator runs it, and the server learns of each change by its revocation
poll (DK_REVOCATION_POLL, 0.5 s; dkserver/auth/revocation.py).

The waits are bounds for a loaded machine, not performance assertions; the
tests print how long each change took to apply.
"""

from __future__ import annotations

import base64
import time

import jwt
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from dkserver.auth.revocation import CLOSE_ACCOUNT_CLOSED, CLOSE_TOKEN_REVOKED
from dkserver.auth.signatures import rotate_key_signing_bytes
from tests.admin.admincli import dkserver
from tests.reliability.daemon import Daemon
from tests.support.client import Identity, get, login, post_json, register_and_login
from tests.support.waiting import wait_for
from tests.support.ws import connect

#: How long a change may take to show on a loaded machine (the poll is 0.5 s).
BOUND = 10.0

pytestmark = pytest.mark.both_backends


@pytest.fixture
def db(backend, tmp_path, request) -> str:
    if backend == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(tmp_path / "dk.db")


async def cli(*args: str):
    return await deferToThread(dkserver, *args)


async def started(tmp_path, db: str, **env: str):
    daemon = Daemon(tmp_path, db=db, **env)
    return daemon, await daemon.start()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def until_status(server, token: str, status: int, what: str):
    """Poll an authenticated GET until it answers ``status``; the time taken."""
    start = time.monotonic()

    async def answered():
        code, body = await get(server, "/user/trackers", auth(token))
        return (code, body) if code == status else None

    _, body = await wait_for(answered, what, BOUND, interval=0.05)
    return time.monotonic() - start, body


async def login_attempt(server, ident: Identity) -> tuple[int, object]:
    """Both login steps; the status and body of the second."""
    _, body = await post_json(server, "/auth/login", {"user_id": ident.user_id})
    signature = ident.sign_b64(body["challenge"].encode())
    return await post_json(
        server,
        "/auth/login?verify=true",
        {"user_id": ident.user_id, "signature": signature},
    )


@pytest_twisted.ensureDeferred
async def test_ban_closes_open_websocket_and_refuses_logins_and_tokens(tmp_path, db):
    daemon, server = await started(tmp_path, db)
    try:
        alice = Identity("alice")
        token = await register_and_login(server, alice)
        ws = await connect(server, token)
        start = time.monotonic()
        result = await cli("user", "ban", "alice", "--db", db, "--json")
        assert result.json()["status"] == "banned"
        code, reason = await ws.wait_closed(timeout=BOUND)
        print(f"ban closed the WebSocket after {time.monotonic() - start:.2f} s")
        assert (code, reason) == (CLOSE_ACCOUNT_CLOSED, "account banned")
        status, body = await get(server, "/user/trackers", auth(token))
        assert (status, body["message"]) == (403, "Account is banned")
        assert await login_attempt(server, alice) == (
            403,
            {"error": True, "message": "Account is banned"},
        )
        # Without the key, nothing tells that the account is banned.
        assert (await login_attempt(server, Identity("alice")))[0] == 401
        # A /ws upgrade is refused before anything is upgraded.
        status, body = await get(server, f"/ws?token={token}")
        assert status == 403

        assert (await cli("user", "unban", "alice", "--db", db)).rc == 0
        fresh = await wait_for(
            lambda: _login_or_none(server, alice), "login after unban", BOUND
        )
        assert (await get(server, "/user/trackers", auth(fresh)))[0] == 200
        # Tokens from before the ban stay refused.
        status, body = await get(server, "/user/trackers", auth(token))
        assert (status, body["message"]) == (401, "Token has been revoked")
    finally:
        await daemon.stop()


async def _login_or_none(server, ident: Identity):
    try:
        return await login(server, ident)
    except AssertionError:
        return None


@pytest_twisted.ensureDeferred
async def test_revoked_token_is_refused_by_the_running_server(tmp_path, db):
    daemon, server = await started(tmp_path, db)
    try:
        bob = Identity("bob")
        token = await register_and_login(server, bob)
        ws = await connect(server, token)
        assert (await get(server, "/user/trackers", auth(token)))[0] == 200
        result = await cli("token", "revoke", "bob", "--db", db)
        assert result.rc == 0, result
        took, body = await until_status(server, token, 401, "revoked token refused")
        print(f"token revoke took effect after {took:.2f} s")
        assert body == {"error": True, "message": "Token has been revoked"}
        assert await ws.wait_closed(timeout=BOUND) == (
            CLOSE_TOKEN_REVOKED,
            "token revoked",
        )
        # The user logs in again; the new token works, on a new WebSocket too.
        fresh = await login(server, bob)
        assert (await get(server, "/user/trackers", auth(fresh)))[0] == 200
        again = await connect(server, fresh)
        await again.expect_silence(0.3)
        again.close()
        await again.wait_closed()
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_deleted_user_is_gone_and_the_id_stays_taken(tmp_path, db):
    daemon, server = await started(tmp_path, db)
    try:
        carol = Identity("carol")
        token = await register_and_login(server, carol)
        ws = await connect(server, token)
        result = await cli("user", "delete", "carol", "--db", db)
        assert result.rc == 0, result
        assert (await ws.wait_closed(timeout=BOUND))[0] == CLOSE_ACCOUNT_CLOSED
        status, body = await get(server, "/user/trackers", auth(token))
        assert (status, body["message"]) == (403, "Account has been deleted")
        assert (await get(server, "/auth/users/carol"))[0] == 404
        code, _ = await post_json(
            server,
            "/auth/register",
            {"user_id": "carol", "username": "x", "public_key": carol.public_key_b64},
        )
        assert code == 409
    finally:
        await daemon.stop()


def _kid(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


@pytest_twisted.ensureDeferred
async def test_secret_rotation_keeps_old_tokens_for_the_grace(tmp_path, db, backend):
    # On PostgreSQL the secret lives in the database (no secret file), on
    # SQLite in the file beside it: both ways of keeping it rotate.
    env = {"DK_JWT_SECRET_FILE": ""} if backend == "postgresql" else {}
    daemon, server = await started(tmp_path, db, **env)
    secret_args = ("--db", db)
    try:
        dave = Identity("dave")
        first = await register_and_login(server, dave)
        result = await cli("token", "rotate-secret", "--grace", "1d", *secret_args)
        assert result.rc == 0, result

        async def new_kid():
            token = await login(server, dave)
            return token if _kid(token) != _kid(first) else None

        second = await wait_for(new_kid, "tokens signed with the new secret", BOUND)
        assert (await get(server, "/user/trackers", auth(first)))[0] == 200
        assert (await get(server, "/user/trackers", auth(second)))[0] == 200

        # No grace: tokens of the second secret stop at once; the first
        # secret's grace (1 day) still runs.
        result = await cli("token", "rotate-secret", "--grace", "0", *secret_args)
        assert result.rc == 0, result
        took, _ = await until_status(server, second, 401, "second secret gone")
        print(f"rotate-secret --grace 0 took effect after {took:.2f} s")
        assert (await get(server, "/user/trackers", auth(first)))[0] == 200
        third = await login(server, dave)
        assert len({_kid(first), _kid(second), _kid(third)}) == 3
        # Restarted, the server reads the same secrets back.
        await daemon.stop()
        server = await daemon.start()
        assert (await get(server, "/user/trackers", auth(first)))[0] == 200
        assert (await get(server, "/user/trackers", auth(third)))[0] == 200
        assert (await get(server, "/user/trackers", auth(second)))[0] == 401
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_rotate_key_with_the_old_key_and_replay_refused(tmp_path, db):
    daemon, server = await started(tmp_path, db)
    try:
        erin = Identity("erin")
        old_token = await register_and_login(server, erin)
        new = Identity("erin")
        _, body = await post_json(server, "/auth/login", {"user_id": "erin"})
        challenge = body["challenge"]
        request = {
            "user_id": "erin",
            "public_key": new.public_key_b64,
            "signature": erin.sign_b64(
                rotate_key_signing_bytes("erin", challenge, new.public_key_b64)
            ),
        }
        code, body = await post_json(server, "/auth/rotate-key", request)
        assert code == 200, body
        rotated_token = body["token"]
        # The same request again: its challenge is used up.
        code, body = await post_json(server, "/auth/rotate-key", request)
        assert code == 400 and "challenge" in body["message"]
        # ... and with a fresh challenge outstanding, the old signature does
        # not cover it (nor does the old key still count).
        await post_json(server, "/auth/login", {"user_id": "erin"})
        code, body = await post_json(server, "/auth/rotate-key", request)
        assert (code, body["message"]) == (401, "Invalid signature")
        # A login signature is not a rotation signature.
        _, body = await post_json(server, "/auth/login", {"user_id": "erin"})
        login_signature = new.sign_b64(body["challenge"].encode())
        code, _ = await post_json(
            server,
            "/auth/rotate-key",
            {
                **request,
                "public_key": erin.public_key_b64,
                "signature": login_signature,
            },
        )
        assert code == 401

        assert (await get(server, "/auth/users/erin"))[1]["public_key"] == (
            new.public_key_b64
        )
        assert (await get(server, "/user/trackers", auth(rotated_token)))[0] == 200
        status, body = await get(server, "/user/trackers", auth(old_token))
        assert (status, body["message"]) == (401, "Token has been revoked")
        assert (await login_attempt(server, erin))[0] == 401  # the old key
        assert await login(server, new)
        # Bad bodies are 400s with the JSON shape.
        code, body = await post_json(
            server,
            "/auth/rotate-key",
            {"user_id": "erin", "public_key": "bm90IGEga2V5", "signature": "x"},
        )
        assert code == 400 and body["error"] is True
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_invite_mode_registers_only_with_a_code(tmp_path, db):
    daemon, server = await started(tmp_path, db, DK_REGISTRATION="invite")
    try:
        frank = Identity("frank")
        body = {
            "user_id": "frank",
            "username": "Frank",
            "public_key": frank.public_key_b64,
        }
        code, reply = await post_json(server, "/auth/register", body)
        assert (code, reply["message"]) == (403, "Registration needs an invite code")
        created = await cli("invite", "create", "--uses", "1", "--db", db, "--json")
        invite = created.json()
        code, reply = await post_json(
            server, "/auth/register", {**body, "invite": "wrong"}
        )
        assert (code, reply["message"]) == (403, "Invite code is not valid")
        code, _ = await post_json(
            server, "/auth/register", {**body, "invite": invite["code"]}
        )
        assert code == 201
        code, _ = await post_json(
            server,
            "/auth/register",
            {**body, "user_id": "grace", "invite": invite["code"]},
        )
        assert code == 403  # used up
        listed = (await cli("invite", "list", "--db", db, "--json")).json()
        assert listed["invites"] == [
            {
                **listed["invites"][0],
                "id": invite["id"],
                "uses_left": 0,
                "usable": False,
            }
        ]
        second = (await cli("invite", "create", "--db", db, "--json")).json()
        assert (await cli("invite", "revoke", second["id"], "--db", db)).rc == 0
        code, _ = await post_json(
            server,
            "/auth/register",
            {**body, "user_id": "grace", "invite": second["code"]},
        )
        assert code == 403
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_closed_registration_refuses_everyone(tmp_path, db):
    daemon, server = await started(tmp_path, db, DK_REGISTRATION="closed")
    try:
        ident = Identity("henry")
        code, body = await post_json(
            server,
            "/auth/register",
            {"user_id": "henry", "username": "H", "public_key": ident.public_key_b64},
        )
        assert (code, body) == (
            403,
            {"error": True, "message": "Registration is closed"},
        )
    finally:
        await daemon.stop()


def test_signing_bytes_are_the_documented_layout():
    assert rotate_key_signing_bytes("u", "Y2g=", "a2V5") == (
        b"dkserver rotate-key\nu\nY2g=\na2V5"
    )
    assert base64.b64decode("a2V5") == b"key"
