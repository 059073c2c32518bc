"""A message rate check that answers later (a bucket shared through Redis)
must not reorder a connection's frames: the real server, with its message
bucket replaced by one whose answers the test gives, in reverse order."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.defer import Deferred

from tests.support.client import Identity, register_and_login
from tests.support.server import make_config, start_server, stop_server
from tests.support.waiting import wait_for
from tests.support.ws import connect, signed_frame

RATE_LIMITED = "Rate limit exceeded. Please slow down."


class HeldChecks:
    """``try_take`` answering through Deferreds the test fires."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, Deferred]] = []

    def try_take(self, key: str) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append((key, d))
        return d


@pytest_twisted.async_yield_fixture
async def held(tmp_path):
    """The server, alice and bob connected, and the held message bucket."""
    server = await start_server(make_config(tmp_path))
    try:
        alice, bob = Identity("alice"), Identity("bob")
        alice_ws = await connect(server, await register_and_login(server, alice))
        bob_ws = await connect(server, await register_and_login(server, bob))
        checks = HeldChecks()
        server.service.hub.limits = checks
        yield server, checks, (alice, alice_ws), (bob, bob_ws)
        for ws in (alice_ws, bob_ws):
            ws.close()
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_frames_wait_for_earlier_rate_checks_and_keep_their_order(held):
    server, checks, (alice, alice_ws), (_, bob_ws) = held
    hub = server.service.hub
    for i in range(4):
        alice_ws.send_json(signed_frame(alice, "bob", f"m{i}"))
    await wait_for(lambda: len(checks.pending) == 4, "4 rate checks")
    assert [key for key, _ in checks.pending] == ["alice"] * 4
    # Waiting frames count as unhandled (shutdown waits for them).
    assert hub.unhandled_frames == 4
    answers = [True, False, True, True]
    for (_, d), allowed in reversed(list(zip(checks.pending, answers))):
        if d is checks.pending[0][1]:
            # Later answers are in; nothing may pass the first frame.
            await bob_ws.expect_silence(0.2)
            await alice_ws.expect_silence(0.0)
        d.callback(allowed)
    got = [(await bob_ws.recv())["content"] for _ in range(3)]
    assert got == ["m0", "m2", "m3"]
    refusal = await alice_ws.recv()
    assert refusal["content"] == RATE_LIMITED
    await wait_for(lambda: hub.unhandled_frames == 0, "frames handled")
    await bob_ws.expect_silence(0.2)


@pytest_twisted.ensureDeferred
async def test_a_failed_rate_check_lets_the_frame_pass(held):
    """Messages fail open: shared buckets fall back to the node's own and do
    not fail, but should a check error, the frame is not lost."""
    _, checks, (alice, alice_ws), (_, bob_ws) = held
    alice_ws.send_json(signed_frame(alice, "bob", "kept"))
    await wait_for(lambda: checks.pending, "the rate check")
    checks.pending[0][1].errback(RuntimeError("check broke"))
    assert (await bob_ws.recv())["content"] == "kept"
