"""Fixtures shared by the hostile-client and property tests."""

from __future__ import annotations

import gc

import pytest
import pytest_twisted
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.support.server import start_server, stop_server


@pytest.fixture(autouse=True)
def no_logged_errors():
    """Fail the test if anything in the process logs an error or a failure."""
    errors: list[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_failure") is not None or event.get("log_level") in (
            LogLevel.error,
            LogLevel.critical,
        ):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    yield errors
    gc.collect()  # surfaces "Unhandled error in Deferred"
    globalLogPublisher.removeObserver(observer)
    details = []
    for event in errors:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        details.append(text)
    assert not errors, "server logged errors:\n" + "\n---\n".join(details)


@pytest_twisted.async_yield_fixture
async def lenient_server(backend_config):
    """Message rate limit lifted, so every frame reaches the parser."""
    running = await start_server(backend_config(message_rate=1e6, message_burst=10**6))
    yield running
    await stop_server(running)
