"""The forward API across nodes (issue 11, item 4): a request at one node
reaches the owner's answering connection on another and returns its
answer; a target node that dies mid-request gives a prompt error."""

from __future__ import annotations

import pytest_twisted

from tests.e2e.test_forward_api import answer_frame, ask, query_of
from tests.support.client import Identity, register_and_login
from tests.support.waiting import wait_for
from tests.support.ws import connect


async def agent_on(cluster, index: int):
    """A user whose agent is connected to node ``index`` only, once every
    node knows it is online there."""
    ident = Identity(cluster.user("owner"))
    token = await register_and_login(cluster[index], ident)
    ws = await connect(cluster[index], token)

    async def known_everywhere() -> bool:
        for i in range(len(cluster)):
            if ident.user_id not in (await cluster.active_users(i))[0]:
                return False
        return True

    await wait_for(known_everywhere, "the agent online on every node", 10)
    return ident, token, ws


@pytest_twisted.ensureDeferred
async def test_forward_request_at_one_node_is_answered_by_the_agent_on_another(
    cluster,
):
    ident, token, agent = await agent_on(cluster, 1)
    for node in (0, 2):
        question = f"what time is it, node {node}?"
        pending = ask(cluster[node], token, {"type": "forward", "query": question})
        assert query_of(await agent.recv(), ident.user_id) == question
        agent.send_json(answer_frame(ident.user_id, f"noon at {node}"))
        code, body = await pending
        assert (code, body) == (200, {"success": True, "answer": f"noon at {node}"})
    agent.close()


@pytest_twisted.ensureDeferred
async def test_forward_to_a_node_that_dies_mid_request_fails_promptly(cluster):
    _, token, agent = await agent_on(cluster, 2)
    pending = ask(cluster[0], token, {"type": "forward", "query": "still there?"})
    await agent.recv()  # asked on node 2, which dies before answering
    cluster.nodes[2].kill()
    code, body = await pending
    # "not connected" when node 2 is declared dead (seconds), not the 504 of
    # the forward timeout (30 s).
    assert code == 404, (code, body)
    # A new request finds nobody to ask at once.
    code, _ = await ask(cluster[1], token, {"type": "forward", "query": "anyone?"})
    assert code == 404
