"""Waiting in tests without blocking the reactor."""

from __future__ import annotations

import inspect
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def wait_for(predicate, what: str, timeout: float = 5.0, interval=0.02):
    """Poll ``predicate`` (sync or async) until truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await sleep(interval)
