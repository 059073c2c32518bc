"""End to end: GET /active-users and the /user/descriptions endpoints.

PROTOCOL.md, "Other REST endpoints": every registered user is in exactly one
of ``online``/``offline`` (online iff at least one open WebSocket), and a
user's descriptions are a non-empty JSON array of strings that replaces the
stored list.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.support.client import Identity, get, post_json, register_and_login
from tests.support.waiting import sleep
from tests.support.ws import connect

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

DESCRIPTIONS_UPDATED = "Descriptions list updated"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def active_users(server) -> dict[str, list[str]]:
    code, body = await get(server, "/active-users")
    assert code == 200, body
    assert set(body) == {"online", "offline"}, body
    return body


def assert_partition(body: dict[str, list[str]], everyone: set[str]) -> None:
    """Every registered user in exactly one list, each listed once."""
    online, offline = body["online"], body["offline"]
    assert len(online) == len(set(online)), body
    assert len(offline) == len(set(offline)), body
    assert not set(online) & set(offline), body
    assert set(online) | set(offline) == everyone, body


async def wait_for_presence(server, everyone, online, timeout=3.0):
    """Poll /active-users until exactly ``online`` are online; the last body."""
    deadline = reactor.seconds() + timeout
    while True:
        body = await active_users(server)
        assert_partition(body, everyone)
        if set(body["online"]) == set(online) or reactor.seconds() > deadline:
            return body
        await sleep(0.05)


def assert_json_error(code: int, body, status: int) -> None:
    assert code == status, (code, body)
    assert isinstance(body, dict), body
    assert body.get("error") is True, body
    assert isinstance(body.get("message"), str) and body["message"], body


# -- /active-users --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_active_users_lists_everyone_offline_before_any_websocket(server):
    assert await active_users(server) == {"online": [], "offline": []}
    for name in ("alice", "bob", "carol"):
        await register_and_login(server, Identity(name))
    body = await active_users(server)
    assert body["online"] == []
    assert_partition(body, {"alice", "bob", "carol"})


@pytest_twisted.ensureDeferred
async def test_active_users_online_iff_an_open_websocket(server):
    everyone = {"alice", "bob", "carol"}
    tokens = {u: await register_and_login(server, Identity(u)) for u in everyone}

    alice_1 = await connect(server, tokens["alice"])
    alice_2 = await connect(server, tokens["alice"])
    bob = await connect(server, tokens["bob"])
    body = await active_users(server)
    assert_partition(body, everyone)
    assert set(body["online"]) == {"alice", "bob"}
    assert body["offline"] == ["carol"]

    # One of alice's two connections closing leaves her online.
    alice_1.close()
    await alice_1.wait_closed()
    await sleep(0.1)
    body = await active_users(server)
    assert_partition(body, everyone)
    assert set(body["online"]) == {"alice", "bob"}

    # Her last connection closing makes her offline.
    alice_2.close()
    await alice_2.wait_closed()
    body = await wait_for_presence(server, everyone, {"bob"})
    assert set(body["online"]) == {"bob"}
    assert set(body["offline"]) == {"alice", "carol"}

    # A connection dropped without a close handshake also ends presence.
    bob.abort()
    body = await wait_for_presence(server, everyone, set())
    assert body["online"] == []
    assert set(body["offline"]) == everyone


# -- /user/descriptions -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_descriptions_post_then_get_returns_the_array(server):
    token = await register_and_login(server, Identity("alice"))
    wanted = ["Rust developer", "likes distributed systems"]
    code, body = await post_json(server, "/user/descriptions", wanted, auth(token))
    assert (code, body) == (200, DESCRIPTIONS_UPDATED)

    response = await server.http.get(server.url("/user/descriptions/alice"))
    assert response.code == 200
    ctype = response.headers.getRawHeaders(b"content-type")[0]
    assert ctype.startswith(b"application/json")
    assert json.loads(await response.content()) == wanted


@pytest_twisted.ensureDeferred
async def test_descriptions_post_replaces_the_list(server):
    token = await register_and_login(server, Identity("alice"))
    first = ["one", "two", "three"]
    second = ["only this"]
    assert (await post_json(server, "/user/descriptions", first, auth(token)))[0] == 200
    assert await get(server, "/user/descriptions/alice") == (200, first)
    assert (await post_json(server, "/user/descriptions", second, auth(token)))[
        0
    ] == 200
    assert await get(server, "/user/descriptions/alice") == (200, second)


@pytest_twisted.ensureDeferred
async def test_descriptions_are_per_user(server):
    alice = await register_and_login(server, Identity("alice"))
    bob = await register_and_login(server, Identity("bob"))
    await post_json(server, "/user/descriptions", ["alice's"], auth(alice))
    await post_json(server, "/user/descriptions", ["bob's"], auth(bob))
    assert await get(server, "/user/descriptions/alice") == (200, ["alice's"])
    assert await get(server, "/user/descriptions/bob") == (200, ["bob's"])


@pytest_twisted.ensureDeferred
async def test_descriptions_empty_array_for_user_without_any(server):
    await register_and_login(server, Identity("alice"))
    assert await get(server, "/user/descriptions/alice") == (200, [])
    # An id nobody registered has none either.
    assert await get(server, "/user/descriptions/nobody") == (200, [])


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"descriptions": ["a"]}', id="object"),
        pytest.param(b'"just a string"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="empty-array"),
        pytest.param(b'["ok", 1]', id="array-with-number"),
        pytest.param(b'["ok", null]', id="array-with-null"),
        pytest.param(b'[["nested"]]', id="array-with-array"),
        pytest.param(b'[{"a": "b"}]', id="array-with-object"),
        pytest.param(b'["unterminated', id="malformed-json"),
        pytest.param(b"", id="empty-body"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_descriptions_post_rejects_anything_but_nonempty_string_array(
    server, raw
):
    token = await register_and_login(server, Identity("alice"))
    assert (await post_json(server, "/user/descriptions", ["kept"], auth(token)))[
        0
    ] == 200
    code, body = await post_json(server, "/user/descriptions", raw, auth(token))
    assert_json_error(code, body, 400)
    # A rejected body leaves the stored list alone.
    assert await get(server, "/user/descriptions/alice") == (200, ["kept"])


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer not-a-jwt"}, id="garbage-token"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
        pytest.param({"Authorization": "Basic YWxpY2U6cHc="}, id="basic-scheme"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_descriptions_post_requires_a_valid_token(server, headers):
    await register_and_login(server, Identity("alice"))
    code, body = await post_json(server, "/user/descriptions", ["x"], headers)
    assert_json_error(code, body, 401)
    assert await get(server, "/user/descriptions/alice") == (200, [])


@pytest_twisted.ensureDeferred
async def test_descriptions_post_rejects_token_signed_with_another_secret(server):
    token = await register_and_login(server, Identity("alice"))
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[::-1]}"
    code, body = await post_json(server, "/user/descriptions", ["x"], auth(forged))
    assert_json_error(code, body, 401)
    assert await get(server, "/user/descriptions/alice") == (200, [])


@pytest_twisted.ensureDeferred
async def test_descriptions_store_unicode_and_metacharacters_as_data(server):
    token = await register_and_login(server, Identity("alice"))
    tricky = [
        "日本語のテキスト ✓ émoji 🚀",
        "Robert'); DROP TABLE user_descriptions;--",
        "' OR '1'='1",
        '<script>alert("x")</script> &amp; &lt;b&gt;',
        'quote " backslash \\ newline \n tab \t',
        "%s %d {0} ${x} `cmd`",
        "\u0000 nul and \u2028 line separator",
        "",
    ]
    code, body = await post_json(server, "/user/descriptions", tricky, auth(token))
    assert (code, body) == (200, DESCRIPTIONS_UPDATED)
    assert await get(server, "/user/descriptions/alice") == (200, tricky)
    # The SQL-looking text did nothing to the table or other users' rows.
    bob = await register_and_login(server, Identity("bob"))
    assert (await post_json(server, "/user/descriptions", ["b"], auth(bob)))[0] == 200
    assert await get(server, "/user/descriptions/bob") == (200, ["b"])
    assert await get(server, "/user/descriptions/alice") == (200, tricky)
