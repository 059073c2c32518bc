"""End to end: forward requests reach the connection that answers.

PROTOCOL.md, "POST /direct-message/" (Stricter): the desktop app keeps a
silent connection beside the ``dk`` agent's; a request must not time out on
the silent one, concurrent requests never get each other's answers, and a
late answer is never taken for a later request's (docs/messaging.md,
"Forward API").
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.e2e.test_forward_api import NO_WAITING, answer_frame, ask, query_of
from tests.support.client import Identity, register_and_login
from tests.support.server import start_server, stop_server
from tests.support.ws import connect

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends


@pytest_twisted.async_yield_fixture
async def slow_timeout_server(backend_config):
    """Forward timeout far above what an answered request takes."""
    running = await start_server(backend_config(forward_timeout=20.0))
    yield running
    await stop_server(running)


@pytest_twisted.async_yield_fixture
async def quick_server(backend_config):
    running = await start_server(backend_config(forward_timeout=0.5))
    yield running
    await stop_server(running)


async def answer_each(agent, count: int) -> list[str]:
    """Answer ``count`` forward requests with ``answer to <query>``, in order."""
    seen = []
    for _ in range(count):
        query = query_of(await agent.recv(), "alice")
        seen.append(query)
        agent.send_json(answer_frame("alice", f"answer to <{query}>"))
    return seen


@pytest_twisted.ensureDeferred
async def test_silent_newest_connection_does_not_make_the_request_time_out(
    slow_timeout_server,
):
    server = slow_timeout_server
    token = await register_and_login(server, Identity("alice"))
    agent = await connect(server, token)
    desktop = await connect(server, token)  # newest, and never answers

    for query in ("first", "second", "third"):
        pending = ask(server, token, {"type": "forward", "query": query})
        assert query_of(await agent.recv(), "alice") == query
        agent.send_json(answer_frame("alice", f"answer to <{query}>"))
        # Answered by the agent, not 504 after the 20 s timeout.
        assert await pending == (
            200,
            {"success": True, "answer": f"answer to <{query}>"},
        )
    # The desktop got the first request (nobody was known to answer yet),
    # and none after the agent had answered.
    assert query_of(await desktop.recv(), "alice") == "first"
    await desktop.expect_silence(0.3)


@pytest_twisted.ensureDeferred
async def test_concurrent_callers_each_get_their_own_answer_beside_a_silent_one(
    slow_timeout_server,
):
    server = slow_timeout_server
    token = await register_and_login(server, Identity("alice"))
    agent = await connect(server, token)
    desktop = await connect(server, token)

    queries = [f"question {i}" for i in range(6)]
    pending = {q: ask(server, token, {"type": "forward", "query": q}) for q in queries}
    seen = await answer_each(agent, len(queries))
    assert sorted(seen) == sorted(queries)
    for query, d in pending.items():
        assert await d == (200, {"success": True, "answer": f"answer to <{query}>"})
    # The desktop connection was asked at most the first request.
    got = [query_of(f, "alice") for f in desktop.received]
    assert len(got) <= 1 and set(got) <= set(queries), got
    await agent.expect_silence(0.2)


@pytest_twisted.ensureDeferred
async def test_late_answer_is_not_taken_for_the_next_request(quick_server):
    server = quick_server
    token = await register_and_login(server, Identity("alice"))
    agent = await connect(server, token)

    first = ask(server, token, {"type": "forward", "query": "first"})
    assert query_of(await agent.recv(), "alice") == "first"
    code, _ = await first  # the agent is too slow: 504
    assert code == 504

    second = ask(server, token, {"type": "forward", "query": "second"})
    assert query_of(await agent.recv(), "alice") == "second"
    # Now the answer to "first" arrives: it must not answer "second".
    agent.send_json(answer_frame("alice", "answer to <first>"))
    refused = await agent.recv()
    assert (refused["from"], refused["content"]) == ("system", NO_WAITING)
    assert not second.called
    agent.send_json(answer_frame("alice", "answer to <second>"))
    assert await second == (200, {"success": True, "answer": "answer to <second>"})


@pytest_twisted.ensureDeferred
async def test_answer_from_the_second_of_two_agents_is_not_misattributed(
    slow_timeout_server,
):
    server = slow_timeout_server
    token = await register_and_login(server, Identity("alice"))
    one = await connect(server, token)
    two = await connect(server, token)

    first = ask(server, token, {"type": "forward", "query": "first"})
    assert query_of(await one.recv(), "alice") == "first"
    assert query_of(await two.recv(), "alice") == "first"
    one.send_json(answer_frame("alice", "one: first"))
    assert await first == (200, {"success": True, "answer": "one: first"})

    second = ask(server, token, {"type": "forward", "query": "second"})
    assert query_of(await one.recv(), "alice") == "second"  # one is known
    # two answers "first" only now, while "second" waits: discarded.
    two.send_json(answer_frame("alice", "two: first"))
    refused = await two.recv()
    assert (refused["from"], refused["content"]) == ("system", NO_WAITING)
    assert not second.called
    one.send_json(answer_frame("alice", "one: second"))
    assert await second == (200, {"success": True, "answer": "one: second"})
