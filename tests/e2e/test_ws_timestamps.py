"""Every path hands back the sender's timestamp text exactly as sent.

PROTOCOL.md, "Byte-exact relay": live, pending on connect and broadcast
backlog return the client's text character for character (``Z`` stays ``Z``,
``+00:00`` stays ``+00:00``, the fraction keeps its digits), and the
signature still verifies.  A forward request is the server's own frame (its
receive time, RFC 3339 with ``Z``); a forward answer answers the HTTP request
and is never relayed or stored, so it has no timestamp to echo.

One real server per backend for the module (TLS; a SQLite file, then a
PostgreSQL database); every test registers its own users, so the tests do
not see each other's messages.
"""

from __future__ import annotations

import itertools
import json
import re
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.support.client import Identity, post_json, register_and_login
from tests.support.db import db_rows
from tests.support.envelope import rfc3339_unix_nanos
from tests.support.server import make_config, start_server, stop_server
from tests.support.waiting import wait_for
from tests.support.ws import broadcast_frame, connect, direct_frame, verify_frame

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

#: mattn/go-sqlite3's ``2006-01-02 15:04:05.999999999-07:00``: the column
#: format the original server reads, which dkserver must keep writing.
GO_COLUMN = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"[+-][0-9]{2}:[0-9]{2}"
)
SERVER_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{9}Z"
)

_DIGITS = "417215494"
_ZONES = ("Z", "+00:00", "-03:00")

TIMESTAMPS = [
    pytest.param("2026-12-01T18:30:36.417215494Z", id="zulu"),
    pytest.param("2026-12-01T18:30:36.417215494+00:00", id="utc-offset"),
    pytest.param("2026-12-01T15:30:36.417215494-03:00", id="minus-0300"),
    pytest.param("2026-12-02T00:00:36.417215494+05:30", id="plus-0530"),
    pytest.param("2026-12-01T18:30:36.417215494-00:00", id="minus-zero"),
    pytest.param("2026-12-01T18:30:36Z", id="no-fraction-zulu"),
    pytest.param("2026-12-01T18:30:36+00:00", id="no-fraction-utc-offset"),
    pytest.param("2026-12-01T15:30:36-03:00", id="no-fraction-minus-0300"),
    # 1-9 fraction digits, cycling through the zones
    *(
        pytest.param(
            f"2026-12-01T18:30:36.{_DIGITS[:n]}{_ZONES[n % 3]}",
            id=f"fraction-{n}-{_ZONES[n % 3]}",
        )
        for n in range(1, 10)
    ),
    pytest.param("2026-12-01T18:30:36.120000000Z", id="trailing-zeros-zulu"),
    pytest.param("2026-12-01T18:30:36.120000000+00:00", id="trailing-zeros-utc"),
    pytest.param("2026-12-01T15:30:36.100-03:00", id="trailing-zeros-minus-0300"),
    pytest.param("2026-12-01t18:30:36.417215494z", id="lower-case"),
    pytest.param("2026-12-01 18:30:36.417215494Z", id="space-separator"),
]

_names = itertools.count()


@pytest_twisted.async_yield_fixture(scope="module")
async def server(tmp_path_factory, module_db_target):
    running = await start_server(
        make_config(
            tmp_path_factory.mktemp("timestamps"),
            module_db_target,
            message_rate=10_000.0,
            message_burst=10_000,
        )
    )
    yield running
    await stop_server(running)


async def new_user(server, role: str) -> tuple[Identity, str]:
    ident = Identity(f"{role}{next(_names)}")
    return ident, await register_and_login(server, ident)


async def close(*clients) -> None:
    for ws in clients:
        ws.close()
    for ws in clients:
        await ws.wait_closed()


def stored_ids(server, sender: str) -> list[int]:
    rows = db_rows(server, "SELECT id FROM messages WHERE from_user = ?", sender)
    return [mid for (mid,) in rows]


def check_frame(server, frame: dict, sent: dict, sender: Identity) -> None:
    """Exact text, verifying signature, and the original's column format."""
    assert frame["timestamp"] == sent["timestamp"], frame
    assert (frame["from"], frame["to"], frame["content"]) == (
        sender.user_id,
        sent["to"],
        sent["content"],
    )
    assert verify_frame(frame, sender.public_key_b64)
    ((column, kept),) = db_rows(
        server,
        "SELECT timestamp, client_timestamp FROM messages WHERE id = ?",
        frame["id"],
    )
    assert GO_COLUMN.fullmatch(column), column
    assert rfc3339_unix_nanos(column) == rfc3339_unix_nanos(sent["timestamp"])
    assert kept in (None, sent["timestamp"])


def make_frame(sender: Identity, to: Identity | None, text: str) -> dict:
    if to is None:
        return broadcast_frame(sender, f"to all at {text}", timestamp=text)
    return direct_frame(sender, to.user_id, f"at {text}", to.public_key_b64, text)


@pytest.mark.parametrize("broadcast", [False, True], ids=["direct", "broadcast"])
@pytest.mark.parametrize("text", TIMESTAMPS)
@pytest_twisted.ensureDeferred
async def test_live_delivery_returns_the_timestamp_text_exactly(
    server, text, broadcast
):
    sender, sender_token = await new_user(server, "sender")
    recipient, recipient_token = await new_user(server, "recipient")
    recipient_ws = await connect(server, recipient_token)
    sender_ws = await connect(server, sender_token)
    sent = make_frame(sender, None if broadcast else recipient, text)
    sender_ws.send_json(sent)
    frame = await recipient_ws.recv()
    assert frame.get("is_broadcast", False) is broadcast
    check_frame(server, frame, sent, sender)
    await close(sender_ws, recipient_ws)


@pytest.mark.parametrize("broadcast", [False, True], ids=["pending-dm", "backlog"])
@pytest.mark.parametrize("text", TIMESTAMPS)
@pytest_twisted.ensureDeferred
async def test_offline_delivery_on_connect_returns_the_timestamp_text_exactly(
    server, text, broadcast
):
    sender, sender_token = await new_user(server, "sender")
    recipient, recipient_token = await new_user(server, "recipient")
    sender_ws = await connect(server, sender_token)
    sent = make_frame(sender, None if broadcast else recipient, text)
    sender_ws.send_json(sent)
    await wait_for(lambda: stored_ids(server, sender.user_id), "the message stored")
    await close(sender_ws)

    recipient_ws = await connect(server, recipient_token)
    frame = await recipient_ws.recv()
    assert frame["id"] == stored_ids(server, sender.user_id)[0]
    assert frame.get("is_broadcast", False) is broadcast
    check_frame(server, frame, sent, sender)
    await recipient_ws.expect_silence(0.1)
    await close(recipient_ws)


def ask(server, token: str, query: str) -> defer.Deferred:
    return defer.ensureDeferred(
        post_json(
            server,
            "/direct-message/",
            {"type": "forward", "query": query},
            {"Authorization": f"Bearer {token}"},
        )
    )


@pytest_twisted.ensureDeferred
async def test_forward_request_carries_the_servers_time_in_rfc3339_with_z(server):
    user, token = await new_user(server, "asked")
    ws = await connect(server, token)
    before = time.time_ns()
    pending = ask(server, token, "what time is it?")
    request = await ws.recv()
    after = time.time_ns()
    assert request["is_forward_message"] is True, request
    assert SERVER_TIME.fullmatch(request["timestamp"]), request
    assert before <= rfc3339_unix_nanos(request["timestamp"]) <= after
    ws.send_json(forward_answer(user, "noon", request["timestamp"]))
    assert await pending == (200, {"success": True, "answer": "noon"})
    await close(ws)


def forward_answer(user: Identity, answer: str, text: str) -> dict:
    inner = json.dumps({"type": "forward_response", "message": answer})
    return {
        "from": user.user_id,
        "to": user.user_id,
        "timestamp": text,
        "content": json.dumps({"type": "forward_response", "message": inner}),
        "is_forward_message": True,
    }


@pytest.mark.parametrize("text", TIMESTAMPS)
@pytest_twisted.ensureDeferred
async def test_forward_answer_with_any_timestamp_form_answers_and_is_not_stored(
    server, text
):
    user, token = await new_user(server, "forwarder")
    ws = await connect(server, token)
    pending = ask(server, token, "q")
    request = await ws.recv()
    assert request["is_forward_message"] is True, request
    ws.send_json(forward_answer(user, f"answered at {text}", text))
    assert await pending == (200, {"success": True, "answer": f"answered at {text}"})
    # Nothing to echo: the answer is neither stored nor relayed.
    assert stored_ids(server, user.user_id) == []
    await ws.expect_silence(0.1)
    await close(ws)
