"""first_step: a coroutine that never waits needs no Deferred."""

from __future__ import annotations

import pytest
from twisted.internet.defer import CancelledError, Deferred, succeed

from dkserver.web.eager import Waiting, first_step


def test_a_coroutine_that_does_not_wait_gives_its_value_at_once(monkeypatch):
    made = []
    real = Deferred.__init__

    def counting(self, *a, **kw):
        made.append(self)
        real(self, *a, **kw)

    async def now():
        return await succeed(1) + 1

    coro = now()  # succeed() above is the one Deferred
    monkeypatch.setattr(Deferred, "__init__", counting)
    assert first_step(coro) == 2
    assert len(made) == 1


def test_an_error_in_the_first_step_is_raised_to_the_caller():
    async def refuse():
        raise KeyError("no")

    with pytest.raises(KeyError):
        first_step(refuse())


def test_a_waiting_coroutine_resumes_where_it_stopped():
    later: Deferred = Deferred()
    seen = []

    async def waits():
        seen.append("before")
        value = await later
        seen.append("after")
        return value + 1

    step = first_step(waits())
    assert isinstance(step, Waiting) and seen == ["before"]
    results = []
    step.deferred.addBoth(results.append)
    later.callback(41)
    assert results == [42] and seen == ["before", "after"]


def test_a_failure_it_waits_on_reaches_the_coroutine_and_then_the_caller():
    later: Deferred = Deferred()

    async def waits():
        try:
            await later
        except ValueError:
            raise KeyError("mapped")

    step = first_step(waits())
    failures = []
    step.deferred.addErrback(failures.append)
    later.errback(ValueError("x"))
    assert failures[0].check(KeyError)


def test_cancelling_cancels_what_it_waits_on():
    cancelled = []
    later: Deferred = Deferred(cancelled.append)

    async def waits():
        await later

    step = first_step(waits())
    failures = []
    step.deferred.addErrback(failures.append)
    step.deferred.cancel()
    assert cancelled == [later]
    assert failures[0].check(CancelledError)
