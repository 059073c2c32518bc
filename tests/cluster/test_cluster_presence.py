"""Presence across nodes (issue 11, item 2): ``/active-users`` is the same
on every node, a node that dies (SIGKILL) or freezes (SIGSTOP) stops
counting its users within the registry's bound, and a frozen node that wakes
announces them again.

The bound (dkserver/cluster/nodes.py): NODE_EXPIRY (4 s) after the node's
last heartbeat, plus up to one HEARTBEAT_INTERVAL (1 s) until a survivor's
heartbeat removes it and each node's next heartbeat sees it gone.  The tests
print what they measured; they wait up to 15 s (a loaded machine).
"""

from __future__ import annotations

import time

import psycopg
import pytest_twisted

from tests.support.client import Identity, register_and_login
from tests.support.waiting import wait_for
from tests.support.ws import connect


async def online_everywhere(cluster, nodes, u: dict, expected: set[str], what: str):
    """Until every node in ``nodes`` lists the same online users and, of
    this test's users ``u``, exactly ``expected`` (by short name)."""
    mine = {u[name] for name in expected}

    async def agreed() -> bool:
        seen = [(await cluster.active_users(index))[0] for index in nodes]
        return all(s == seen[0] for s in seen) and seen[0] & set(u.values()) == mine

    await wait_for(agreed, what, 15, interval=0.05)


async def users(cluster, *names: str) -> tuple[dict, dict]:
    """Unique ids for ``names`` and a token each (registered on node 0)."""
    u = {name: cluster.user(name) for name in names}
    tokens = {n: await register_and_login(cluster[0], Identity(u[n])) for n in names}
    return u, tokens


@pytest_twisted.ensureDeferred
async def test_active_users_are_the_same_on_every_node(cluster):
    u, tokens = await users(cluster, "alice", "bob", "carol")
    alice_ws = await connect(cluster[0], tokens["alice"])
    bob_ws = await connect(cluster[1], tokens["bob"])
    await online_everywhere(cluster, range(3), u, {"alice", "bob"}, "both online")

    # Carol registered on node 0: node 2 lists her once its copy of the user
    # list is reloaded (USER_LIST_MAX_AGE, 10 s), at once if it had none yet.
    # The cluster is shared by the whole session, so either can hold.
    async def carol_offline_on_2() -> bool:
        _, offline = await cluster.active_users(2)
        assert u["bob"] not in offline
        return u["carol"] in offline

    await wait_for(carol_offline_on_2, "carol listed offline on node 2", 20)

    # A second connection on another node, then the first goes: still online.
    bob_again = await connect(cluster[2], tokens["bob"])
    bob_ws.close()
    await bob_ws.wait_closed()
    await online_everywhere(cluster, range(3), u, {"alice", "bob"}, "bob still on")
    bob_again.close()
    await bob_again.wait_closed()
    await online_everywhere(cluster, range(3), u, {"alice"}, "bob offline everywhere")
    alice_ws.close()


async def alice_on_0_and_carol_on_2(cluster):
    u, tokens = await users(cluster, "alice", "carol")
    alice_ws = await connect(cluster[0], tokens["alice"])
    carol_ws = await connect(cluster[2], tokens["carol"])
    await online_everywhere(cluster, range(3), u, {"alice", "carol"}, "both online")
    return u, alice_ws, carol_ws


@pytest_twisted.ensureDeferred
async def test_users_of_a_killed_node_go_offline_within_the_bound(cluster):
    u, alice_ws, carol_ws = await alice_on_0_and_carol_on_2(cluster)
    cluster.nodes[2].kill()
    killed = time.monotonic()
    await online_everywhere(cluster, (0, 1), u, {"alice"}, "carol offline (SIGKILL)")
    print(f"presence expiry after SIGKILL: {time.monotonic() - killed:.2f} s")

    # The survivors close the dead node's session rows (analytics), and only
    # those: alice's session on a live node stays open.
    def open_sessions() -> dict[str, str]:
        with psycopg.connect(cluster.pg_url) as conn:
            rows = conn.execute(
                "SELECT user_id, node_id FROM sessions WHERE end_time IS NULL"
                " AND user_id = ANY(%s)",
                ([u["alice"], u["carol"]],),
            ).fetchall()
        return dict(rows)

    async def carol_closed() -> bool:
        return open_sessions() == {u["alice"]: "n0"}

    await wait_for(carol_closed, "the dead node's session closed", 15)
    alice_ws.close()
    await carol_ws.wait_closed()  # the node is gone


@pytest_twisted.ensureDeferred
async def test_a_frozen_node_drops_out_and_announces_itself_when_it_wakes(cluster):
    u, alice_ws, carol_ws = await alice_on_0_and_carol_on_2(cluster)
    cluster.nodes[2].freeze()
    frozen = time.monotonic()
    await online_everywhere(cluster, (0, 1), u, {"alice"}, "carol offline (SIGSTOP)")
    print(f"presence expiry after SIGSTOP: {time.monotonic() - frozen:.2f} s")

    cluster.nodes[2].thaw()
    woke = time.monotonic()
    # Her connection survived the freeze: the node announces her again.
    await online_everywhere(cluster, range(3), u, {"alice", "carol"}, "carol back")
    print(f"re-announced after SIGCONT: {time.monotonic() - woke:.2f} s")
    alice_ws.close()
    carol_ws.close()
