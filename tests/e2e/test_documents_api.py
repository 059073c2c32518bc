"""End to end: POST /register-document/ and /append-document/.

PROTOCOL.md, "POST /register-document/ and POST /append-document/": the
document reaches the token owner's connection as a forward frame (outer
``filename``/``content`` empty, the document in the inner JSON text), the
inner ``type`` of the client's answer decides ``success``, and the errors are
400 / 401 / 404 at once / 504 after the forward timeout.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.client.dkcli import Dk, wait_online
from tests.support.client import Identity, post_json, register_and_login
from tests.support.server import start_server, stop_server
from tests.support.ws import connect

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

ROUTES = {
    "register_document": "/register-document/",
    "append_document": "/append-document/",
}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(server, path: str, token: str, body) -> defer.Deferred:
    return defer.ensureDeferred(post_json(server, path, body, auth(token)))


def document_of(frame: dict, user_id: str) -> dict:
    """Check a document request frame's shape; return its inner JSON."""
    assert (frame["from"], frame["to"]) == (user_id, user_id), frame
    assert frame["is_forward_message"] is True, frame
    assert frame["status"] == "pending", frame
    outer = json.loads(frame["content"])
    assert outer == {
        "type": "forward",
        "message": outer["message"],
        "filename": "",
        "content": "",
    }, outer
    assert isinstance(outer["message"], str), outer  # JSON nested in a string
    inner = json.loads(outer["message"])
    assert set(inner) == {"type", "filename", "content", "metadata"}, inner
    return inner


def document_answer(user_id: str, kind: str, message: str) -> dict:
    inner = json.dumps({"type": kind, "message": message})
    return {
        "to": user_id,
        "is_forward_message": True,
        "content": json.dumps({"type": "forward_response", "message": inner}),
    }


def assert_json_error(code: int, body, status: int) -> None:
    assert code == status, (code, body)
    assert isinstance(body, dict) and body.get("error") is True, body
    assert isinstance(body.get("message"), str) and body["message"], body


@pytest_twisted.async_yield_fixture
async def quick_server(backend_config):
    running = await start_server(backend_config(forward_timeout=0.5))
    yield running
    await stop_server(running)


@pytest.mark.parametrize("kind", sorted(ROUTES))
@pytest_twisted.ensureDeferred
async def test_document_reaches_the_owners_client_and_its_success_is_the_reply(
    server, kind
):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    body = {
        "type": "whatever",
        "filename": "notes/ünï.md",
        "content": 'line 1\n"quoted" {"json": true}',
        "metadata": {"author": "alice", "lang": "en"},
    }
    pending = post(server, ROUTES[kind], token, body)
    inner = document_of(await ws.recv(), "alice")
    assert inner == {
        "type": kind,
        "filename": body["filename"],
        "content": body["content"],
        "metadata": body["metadata"],
    }
    assert not pending.called
    ws.send_json(document_answer("alice", "register_document_success", "stored"))
    assert await pending == (
        200,
        {"success": True, "message": "stored", "type": "register_document_success"},
    )
    await ws.expect_silence(0.2)  # consumed: no error frame, not relayed


@pytest_twisted.ensureDeferred
async def test_document_error_answer_is_a_200_with_success_false(server):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    pending = post(
        server, "/register-document/", token, {"filename": "a.txt", "content": "x"}
    )
    inner = document_of(await ws.recv(), "alice")
    assert inner["metadata"] == {}  # absent metadata goes out as an empty object
    ws.send_json(document_answer("alice", "register_document_error", "disk full"))
    assert await pending == (
        200,
        {"success": False, "message": "disk full", "type": "register_document_error"},
    )


@pytest_twisted.ensureDeferred
async def test_plain_forward_answer_to_a_document_is_not_a_success(server):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    pending = post(
        server, "/append-document/", token, {"filename": "a.txt", "content": "x"}
    )
    document_of(await ws.recv(), "alice")
    ws.send_json(document_answer("alice", "forward_response", "what is this?"))
    code, body = await pending
    assert code == 200 and body["success"] is False, body


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"content": "x"}, id="missing-filename"),
        pytest.param({"filename": "  ", "content": "x"}, id="blank-filename"),
        pytest.param({"filename": "a"}, id="missing-content"),
        pytest.param({"filename": "a", "content": "\n\t "}, id="blank-content"),
        pytest.param({"filename": 7, "content": "x"}, id="non-string-filename"),
        pytest.param({"filename": "a", "content": ["x"]}, id="non-string-content"),
        pytest.param(
            {"filename": "a", "content": "x", "metadata": ["k"]}, id="metadata-array"
        ),
        pytest.param(
            {"filename": "a", "content": "x", "metadata": {"k": 1}},
            id="metadata-non-string-value",
        ),
        pytest.param(["a", "x"], id="array-body"),
        pytest.param(b'{"filename": "a", "content": ', id="malformed-json"),
    ],
)
@pytest.mark.parametrize("path", sorted(ROUTES.values()))
@pytest_twisted.ensureDeferred
async def test_document_rejects_bad_bodies_with_400(server, path, body):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    code, reply = await post_json(server, path, body, auth(token))
    assert_json_error(code, reply, 400)
    await ws.expect_silence(0.1)  # nothing was forwarded


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": "Bearer not.a.jwt"}, id="bad-token"),
    ],
)
@pytest.mark.parametrize("path", sorted(ROUTES.values()))
@pytest_twisted.ensureDeferred
async def test_document_requires_a_valid_token(server, path, headers):
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    code, reply = await post_json(
        server, path, {"filename": "a", "content": "x"}, headers
    )
    assert_json_error(code, reply, 401)
    await ws.expect_silence(0.1)


@pytest.mark.parametrize("path", sorted(ROUTES.values()))
@pytest_twisted.ensureDeferred
async def test_document_without_a_connection_is_404_at_once(quick_server, path):
    server = quick_server
    token = await register_and_login(server, Identity("alice"))
    code, reply = await post_json(
        server, path, {"filename": "a", "content": "x"}, auth(token)
    )
    assert_json_error(code, reply, 404)


@pytest.mark.parametrize("path", sorted(ROUTES.values()))
@pytest_twisted.ensureDeferred
async def test_document_unanswered_is_504_after_the_forward_timeout(quick_server, path):
    server = quick_server
    token = await register_and_login(server, Identity("alice"))
    ws = await connect(server, token)
    pending = post(server, path, token, {"filename": "a", "content": "x"})
    document_of(await ws.recv(), "alice")
    code, reply = await pending
    assert_json_error(code, reply, 504)


@pytest_twisted.ensureDeferred
async def test_dk_serve_forward_answers_documents_with_a_clear_error(server, tmp_path):
    alice = Dk(server, tmp_path / "alice")
    await alice.ok("init", "alice")
    serving = alice.start("serve-forward", "--count", "1", "tr a-z A-Z")
    await wait_online(server, "alice")
    token = (alice.home / "token").read_text().strip()

    code, body = await post_json(
        server,
        "/register-document/",
        {"filename": "a.txt", "content": "x"},
        auth(token),
    )
    assert code == 200, body
    assert body["success"] is False and body["type"] == "register_document_error"
    assert "does not store documents" in body["message"]
    # Ordinary forward requests are still answered by the command.
    asked = await alice.ok("ask", "still here")
    assert asked.out.strip() == "STILL HERE"
    assert (await serving).code == 0
