"""End to end: POST /direct-message/ asks the token owner's own client.

PROTOCOL.md, "POST /direct-message/" and the forward-answer rule of the
WebSocket section: the request reaches the user's connection as a two-level
JSON forward frame, the client's forward answer resolves the HTTP request
(200 ``{"success": true, "answer": ...}``), is not relayed or stored, and only
the token owner's own connection can answer it.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tests.support.client import Identity, post_json, register_and_login
from tests.support.db import db_rows
from tests.support.server import start_server, stop_server
from tests.support.waiting import sleep
from tests.support.ws import connect, direct_frame

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

NO_WAITING = "No forward request is waiting for an answer"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ask(server, token: str, body) -> defer.Deferred:
    """Start a /direct-message/ request without waiting for it."""
    return defer.ensureDeferred(
        post_json(server, "/direct-message/", body, auth(token))
    )


def answer_frame(user_id: str, answer: str, flag: bool = True) -> dict:
    inner = json.dumps({"type": "forward_response", "message": answer})
    frame = {
        "to": user_id,
        "content": json.dumps({"type": "forward_response", "message": inner}),
    }
    if flag:
        frame["is_forward_message"] = True
    return frame


def query_of(frame: dict, user_id: str) -> str:
    """Check a forward request frame's shape; return the query it carries."""
    assert frame["from"] == user_id, frame
    assert frame["to"] == user_id, frame
    assert frame["is_forward_message"] is True, frame
    assert frame["status"] == "pending", frame
    assert isinstance(frame.get("timestamp"), str) and frame["timestamp"], frame
    outer = json.loads(frame["content"])
    assert set(outer) == {"type", "message"}, outer
    assert outer["type"] == "forward", outer
    assert isinstance(outer["message"], str), outer  # JSON nested in a string
    inner = json.loads(outer["message"])
    assert inner == {"type": "forward", "message": inner["message"]}, inner
    return inner["message"]


def message_rows(server) -> int:
    return db_rows(server, "SELECT COUNT(*) FROM messages")[0][0]


def assert_json_error(code: int, body, status: int) -> None:
    assert code == status, (code, body)
    assert isinstance(body, dict), body
    assert body.get("error") is True, body
    assert isinstance(body.get("message"), str) and body["message"], body


@pytest_twisted.async_yield_fixture
async def quick_server(backend_config):
    """A server whose forward requests time out after half a second."""
    running = await start_server(backend_config(forward_timeout=0.5))
    yield running
    await stop_server(running)


@pytest_twisted.ensureDeferred
async def test_forward_round_trip_returns_the_clients_answer(server):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)

    pending = ask(server, token, {"type": "forward", "query": "what?"})
    frame = await ws.recv()
    assert query_of(frame, "alice") == "what?"
    # The exact nesting of PROTOCOL.md: outer message is the inner JSON text.
    outer = json.loads(frame["content"])
    assert json.loads(outer["message"]) == {"type": "forward", "message": "what?"}
    assert not pending.called

    ws.send_json(answer_frame("alice", "42"))
    code, body = await pending
    assert (code, body) == (200, {"success": True, "answer": "42"})
    # The answer was consumed, not answered with an error frame or echoed.
    await ws.expect_silence(0.2)


@pytest_twisted.ensureDeferred
async def test_forward_accepts_message_field_instead_of_query(server):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    pending = ask(server, token, {"type": "forward", "message": "via message"})
    assert query_of(await ws.recv(), "alice") == "via message"
    ws.send_json(answer_frame("alice", "ok"))
    assert await pending == (200, {"success": True, "answer": "ok"})


@pytest_twisted.ensureDeferred
async def test_forward_query_text_survives_unicode_and_json_metacharacters(server):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    query = 'naïve "quoted" \\ {"type": "x"} 日本 🚀\n'
    answer = '{"not": "parsed"} ✓ "'
    pending = ask(server, token, {"type": "forward", "query": query})
    assert query_of(await ws.recv(), "alice") == query
    ws.send_json(answer_frame("alice", answer))
    assert await pending == (200, {"success": True, "answer": answer})


@pytest_twisted.ensureDeferred
async def test_forward_answer_recognised_by_content_type_without_flag(server):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    pending = ask(server, token, {"type": "forward", "query": "q"})
    query_of(await ws.recv(), "alice")
    ws.send_json(answer_frame("alice", "by content", flag=False))
    assert await pending == (200, {"success": True, "answer": "by content"})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"type": "direct", "query": "q"}, id="wrong-type"),
        pytest.param({"query": "q"}, id="missing-type"),
        pytest.param({"type": "forward"}, id="missing-query"),
        pytest.param({"type": "forward", "query": ""}, id="empty-query"),
        pytest.param({"type": "forward", "query": 7}, id="non-string-query"),
        pytest.param(["forward", "q"], id="array-body"),
        pytest.param(b'{"type": "forward", "query": ', id="malformed-json"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_forward_rejects_bad_request_bodies_with_400(server, body):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    code, reply = await post_json(server, "/direct-message/", body, auth(token))
    assert_json_error(code, reply, 400)
    await ws.expect_silence(0.2)  # nothing was forwarded


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer not-a-jwt"}, id="garbage-token"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_forward_requires_a_valid_token(server, headers):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    code, reply = await post_json(
        server, "/direct-message/", {"type": "forward", "query": "q"}, headers
    )
    assert_json_error(code, reply, 401)
    await ws.expect_silence(0.2)


@pytest_twisted.ensureDeferred
async def test_forward_times_out_with_504_when_client_never_answers(quick_server):
    server = quick_server
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    started = reactor.seconds()
    pending = ask(server, token, {"type": "forward", "query": "anyone?"})
    query_of(await ws.recv(), "alice")
    code, reply = await pending
    elapsed = reactor.seconds() - started
    assert_json_error(code, reply, 504)
    assert 0.4 <= elapsed < 3.0, elapsed

    # A late answer resolves nothing: the client is told so.
    ws.send_json(answer_frame("alice", "too late"))
    late = await ws.recv()
    assert (late["from"], late["status"], late["content"]) == (
        "system",
        "error",
        NO_WAITING,
    )

    # And the next request still works normally.
    pending = ask(server, token, {"type": "forward", "query": "again"})
    assert query_of(await ws.recv(), "alice") == "again"
    ws.send_json(answer_frame("alice", "here"))
    assert await pending == (200, {"success": True, "answer": "here"})


@pytest_twisted.ensureDeferred
async def test_forward_timeout_covers_the_wait_for_an_earlier_request(quick_server):
    """A queued request times out 0.5 s after it arrived, not after its turn."""
    server = quick_server
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    started = reactor.seconds()
    first = ask(server, token, {"type": "forward", "query": "first"})
    await sleep(0.1)
    second = ask(server, token, {"type": "forward", "query": "second"})
    assert query_of(await ws.recv(), "alice") == "first"
    code, reply = await first
    assert_json_error(code, reply, 504)
    code, reply = await second
    assert_json_error(code, reply, 504)
    # Each done about 0.5 s after it was made; the second did not get a fresh
    # 0.5 s once the first gave up (that would end it at 1.0 s).
    assert reactor.seconds() - started < 0.95
    # It was passed on with the time it had left, and expired unanswered.
    assert query_of(await ws.recv(), "alice") == "second"
    ws.send_json(answer_frame("alice", "late"))
    late = await ws.recv()
    assert (late["from"], late["content"]) == ("system", NO_WAITING)


@pytest_twisted.ensureDeferred
async def test_forward_to_user_without_connection_is_404_json(server):
    token = await register_and_login(server, Identity("alice"))
    code, reply = await post_json(
        server, "/direct-message/", {"type": "forward", "query": "q"}, auth(token)
    )
    assert_json_error(code, reply, 404)


@pytest_twisted.ensureDeferred
async def test_forward_fails_fast_when_the_asked_connection_closes(server):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    started = reactor.seconds()
    pending = ask(server, token, {"type": "forward", "query": "q"})
    query_of(await ws.recv(), "alice")
    ws.close()
    code, reply = await pending
    assert_json_error(code, reply, 404)
    assert reactor.seconds() - started < 5.0  # not the 30 s timeout


@pytest_twisted.ensureDeferred
async def test_concurrent_forwards_of_one_user_each_get_their_own_answer(server):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)

    def answer_for(query: str) -> str:
        return f"answer to <{query}>"

    queries = ["question A", "question B", "question C"]
    pending = {q: ask(server, token, {"type": "forward", "query": q}) for q in queries}

    # The client answers each request as it arrives, from its own query text.
    seen = []
    for _ in queries:
        query = query_of(await ws.recv(), "alice")
        seen.append(query)
        # Make the answers slow enough that the requests overlap.
        await sleep(0.05)
        ws.send_json(answer_frame("alice", answer_for(query)))
    assert sorted(seen) == sorted(queries)

    for query, d in pending.items():
        code, body = await d
        assert (code, body) == (200, {"success": True, "answer": answer_for(query)})
    await ws.expect_silence(0.2)


@pytest_twisted.ensureDeferred
async def test_forward_not_answered_by_another_users_connection(server):
    alice_token = await register_and_login(server, Identity("alice"))
    bob_token = await register_and_login(server, Identity("bob"))
    alice = await connect(server, alice_token)
    bob = await connect(server, bob_token)

    pending = ask(server, alice_token, {"type": "forward", "query": "secret"})
    query_of(await alice.recv(), "alice")

    # Bob tries to answer alice's request, addressed to her and to himself.
    bob.send_json(answer_frame("alice", "from bob"))
    bob.send_json(answer_frame("bob", "from bob"))
    for _ in range(2):
        refused = await bob.recv()
        assert (refused["from"], refused["status"], refused["content"]) == (
            "system",
            "error",
            NO_WAITING,
        )
    await sleep(0.2)
    assert not pending.called
    await alice.expect_silence(0.1)  # nothing of bob's reached alice

    alice.send_json(answer_frame("alice", "from alice"))
    assert await pending == (200, {"success": True, "answer": "from alice"})


@pytest_twisted.ensureDeferred
async def test_forward_goes_to_every_connection_and_the_first_answer_wins(server):
    token = await register_and_login(server, Identity("alice"))
    older = await connect(server, token)
    newer = await connect(server, token)

    pending = ask(server, token, {"type": "forward", "query": "which device?"})
    # Neither is known to answer yet, so both are asked.
    assert query_of(await newer.recv(), "alice") == "which device?"
    assert query_of(await older.recv(), "alice") == "which device?"

    older.send_json(answer_frame("alice", "from the older device"))
    assert await pending == (200, {"success": True, "answer": "from the older device"})

    # The other device's answer to the same request is too late.
    newer.send_json(answer_frame("alice", "from the newer device"))
    refused = await newer.recv()
    assert (refused["from"], refused["content"]) == ("system", NO_WAITING)


@pytest_twisted.ensureDeferred
async def test_forward_answer_is_neither_relayed_nor_stored(server):
    alice = Identity("alice")
    alice_token = await register_and_login(server, alice)
    bob = Identity("bob")
    bob_token = await register_and_login(server, bob)
    alice_ws = await connect(server, alice_token)
    alice_2 = await connect(server, alice_token)  # another device of alice
    bob_ws = await connect(server, bob_token)

    # Control: an ordinary message is stored (so the count below can move).
    alice_ws.send_json(direct_frame(alice, "bob", "hello", bob.public_key_b64))
    await bob_ws.recv()
    before = message_rows(server)
    assert before == 1

    pending = ask(server, alice_token, {"type": "forward", "query": "q"})
    query_of(await alice_2.recv(), "alice")  # both of alice's connections
    query_of(await alice_ws.recv(), "alice")  # are asked (neither answered yet)
    alice_2.send_json(answer_frame("alice", "a"))
    assert await pending == (200, {"success": True, "answer": "a"})

    await sleep(0.2)
    assert message_rows(server) == before
    assert db_rows(
        server, "SELECT COUNT(*) FROM messages WHERE is_forward_message = 1"
    ) == [(0,)]
    assert db_rows(server, "SELECT COUNT(*) FROM message_events") == [(1,)]
    # No one saw the answer: not alice's other device, not bob.
    await alice_ws.expect_silence(0.1)
    await bob_ws.expect_silence(0.1)
    await alice_2.expect_silence(0.1)

    # Neither is the request itself stored, nor re-sent as a pending message.
    third = await connect(server, alice_token)
    await third.expect_silence(0.3)
