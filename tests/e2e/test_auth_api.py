"""The auth API of PROTOCOL.md over real TLS against the real service."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from dkserver.store import StoreUnavailable
from tests.support.client import (
    Identity,
    get,
    login,
    post_json,
    register,
    register_and_login,
)

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends


@pytest_twisted.ensureDeferred
async def test_register_login_and_user_lookup(server):
    alice = Identity("alice", "Alice")
    assert await register(server, alice) == 201
    token = await login(server, alice)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["user_id"] == "alice"
    assert claims["exp"] == int(claims["iat"]) + 24 * 3600

    code, body = await get(server, "/auth/users/alice")
    assert code == 200
    assert body == {
        "user_id": "alice",
        "username": "Alice",
        "public_key": alice.public_key_b64,
    }
    assert await get(server, "/auth/check-userid/alice") == (200, {"exists": True})
    assert await get(server, "/auth/check-userid/nobody") == (200, {"exists": False})
    code, body = await get(server, "/auth/users/nobody")
    assert code == 404 and body["error"] is True


@pytest_twisted.ensureDeferred
async def test_register_answers_text_201_and_409_on_duplicate(server):
    ident = Identity("dup")
    response = await server.http.post(
        server.url("/auth/register"),
        data=json.dumps(
            {"user_id": "dup", "username": "D", "public_key": ident.public_key_b64}
        ).encode(),
    )
    assert response.code == 201
    assert (await response.text()) == "User registered successfully"
    code, body = await post_json(
        server,
        "/auth/register",
        {"user_id": "dup", "username": "D", "public_key": ident.public_key_b64},
    )
    assert code == 409
    assert body["error"] is True and body["message"]


@pytest_twisted.ensureDeferred
async def test_register_validation_errors_are_json_400(server):
    key = Identity("x").public_key_b64
    bad_bodies = [
        b"{not json",
        b"[]",
        b'"string"',
        {"user_id": "a", "username": "A"},
        {"user_id": 5, "username": "A", "public_key": key},
        {"user_id": "has/slash", "username": "A", "public_key": key},
        {"user_id": "has space", "username": "A", "public_key": key},
        {"user_id": "x" * 129, "username": "A", "public_key": key},
        {"user_id": "broadcast", "username": "A", "public_key": key},
        {"user_id": "system", "username": "A", "public_key": key},
        {"user_id": "ok", "username": "A", "public_key": "not base64!"},
        {
            "user_id": "ok",
            "username": "A",
            "public_key": base64.b64encode(b"x" * 31).decode(),
        },
    ]
    for body in bad_bodies:
        code, answer = await post_json(server, "/auth/register", body)
        assert code == 400, (body, code, answer)
        assert answer["error"] is True and answer["message"], body
    assert await get(server, "/auth/check-userid/ok") == (200, {"exists": False})


@pytest_twisted.ensureDeferred
async def test_challenge_is_issued_for_unknown_users(server):
    code, body = await post_json(server, "/auth/login", {"user_id": "ghost"})
    assert code == 200
    assert len(base64.b64decode(body["challenge"], validate=True)) == 32


@pytest_twisted.ensureDeferred
async def test_challenge_is_single_use(server):
    bob = Identity("bob")
    assert await register(server, bob) == 201
    _, body = await post_json(server, "/auth/login", {"user_id": "bob"})
    signature = bob.sign_b64(body["challenge"].encode())
    verify = {"user_id": "bob", "signature": signature}
    code, first = await post_json(server, "/auth/login?verify=true", verify)
    assert code == 200 and "token" in first
    code, replay = await post_json(server, "/auth/login?verify=true", verify)
    assert code == 400 and replay["error"] is True


@pytest_twisted.ensureDeferred
async def test_failed_verify_consumes_the_challenge(server):
    carol = Identity("carol")
    assert await register(server, carol) == 201
    _, body = await post_json(server, "/auth/login", {"user_id": "carol"})
    wrong = Identity("mallory").sign_b64(body["challenge"].encode())
    code, _ = await post_json(
        server, "/auth/login?verify=true", {"user_id": "carol", "signature": wrong}
    )
    assert code == 401
    right = carol.sign_b64(body["challenge"].encode())
    code, _ = await post_json(
        server, "/auth/login?verify=true", {"user_id": "carol", "signature": right}
    )
    assert code == 400


@pytest_twisted.ensureDeferred
async def test_verify_errors(server):
    dave = Identity("dave")
    assert await register(server, dave) == 201
    # No challenge outstanding.
    code, _ = await post_json(
        server, "/auth/login?verify=true", {"user_id": "dave", "signature": "AAAA"}
    )
    assert code == 400
    # Signature not base64.
    await post_json(server, "/auth/login", {"user_id": "dave"})
    code, _ = await post_json(
        server, "/auth/login?verify=true", {"user_id": "dave", "signature": "***"}
    )
    assert code == 400
    # Signing the decoded bytes instead of the base64 text does not verify.
    _, body = await post_json(server, "/auth/login", {"user_id": "dave"})
    raw = base64.b64decode(body["challenge"])
    code, _ = await post_json(
        server,
        "/auth/login?verify=true",
        {"user_id": "dave", "signature": dave.sign_b64(raw)},
    )
    assert code == 401
    # Unknown user with a well-formed signature.
    _, body = await post_json(server, "/auth/login", {"user_id": "ghost"})
    code, _ = await post_json(
        server,
        "/auth/login?verify=true",
        {"user_id": "ghost", "signature": dave.sign_b64(body["challenge"].encode())},
    )
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_security_headers_on_every_https_response(server):
    for path in ("/auth/check-userid/x", "/no/such/path"):
        response = await server.http.get(server.url(path))
        await response.content()
        headers = response.headers
        assert headers.getRawHeaders(b"strict-transport-security")[0].startswith(
            b"max-age="
        )
        assert headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]


@pytest_twisted.ensureDeferred
async def test_unknown_path_and_wrong_method_are_json(server):
    code, body = await get(server, "/no/such/path")
    assert code == 404 and body["error"] is True
    code, body = await get(server, "/auth/register")
    assert code == 405 and body["error"] is True
    response = await server.http.delete(server.url("/auth/login"))
    assert response.code == 405
    assert b"POST" in response.headers.getRawHeaders(b"allow")[0]
    await response.content()


@pytest_twisted.ensureDeferred
async def test_token_works_after_login_for_registered_user(server):
    token = await register_and_login(server, Identity("erin"))
    assert await server.service.auth.authenticate(token) == "erin"


@pytest_twisted.ensureDeferred
async def test_overlong_user_id_gets_no_challenge_and_is_not_kept(server):
    code, body = await post_json(server, "/auth/login", {"user_id": "x" * 5000})
    assert code == 400 and body["error"] is True
    assert len(server.service.challenges) == 0
    code, _ = await post_json(server, "/auth/login", {"user_id": "x" * 128})
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_login_steps_answer_json_with_security_headers(server):
    # Both steps take the direct route (no router): same headers as the rest.
    for path, body in (
        ("/auth/login", {"user_id": "gail"}),
        ("/auth/login?verify=true", {"user_id": "gail", "signature": "AAAA"}),
    ):
        response = await server.http.post(
            server.url(path), data=json.dumps(body).encode()
        )
        content = await response.content()
        headers = response.headers
        assert headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert headers.getRawHeaders(b"x-frame-options") == [b"DENY"]
        assert headers.getRawHeaders(b"strict-transport-security")
        # What twisted.web's own process() would add, set by the direct path.
        assert headers.getRawHeaders(b"server")[0].startswith(b"TwistedWeb/")
        assert headers.getRawHeaders(b"date")[0].endswith(b" GMT")
    assert response.code == 401
    assert json.loads(content) == {"error": True, "message": "Invalid signature"}


def _slow_user_lookup(server, outcome):
    """Make the verify step's user lookup wait (as on a cache miss), then
    return ``outcome(user_id)``."""
    users = server.service.store.users
    original = users.get

    async def slow_get(user_id):
        await deferLater(reactor, 0.05, lambda: None)
        return await outcome(original, user_id)

    users.get = slow_get


@pytest_twisted.ensureDeferred
async def test_login_answers_when_the_user_lookup_waits(server):
    frank = Identity("frank")
    assert await register(server, frank) == 201

    async def found(original, user_id):
        return await original(user_id)

    _slow_user_lookup(server, found)
    token = await login(server, frank)
    assert await server.service.auth.authenticate(token) == "frank"


@pytest_twisted.ensureDeferred
async def test_login_errors_after_a_wait_are_the_json_errors(server):
    hana = Identity("hana")
    assert await register(server, hana) == 201

    async def verify():
        _, body = await post_json(server, "/auth/login", {"user_id": "hana"})
        return await post_json(
            server,
            "/auth/login?verify=true",
            {"user_id": "hana", "signature": hana.sign_b64(body["challenge"].encode())},
        )

    async def unavailable(original, user_id):
        raise StoreUnavailable("test outage")

    _slow_user_lookup(server, unavailable)
    code, body = await verify()
    assert code == 503
    assert body == {
        "error": True,
        "message": "Service temporarily unavailable; please retry",
    }

    async def broken(original, user_id):
        raise RuntimeError("a bug")

    _slow_user_lookup(server, broken)
    code, body = await verify()
    assert (code, body) == (500, {"error": True, "message": "Internal server error"})
