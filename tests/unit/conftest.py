"""Close what unit tests opened over a StringTransport (tests.support.opened)."""

from __future__ import annotations

import pytest

from tests.support.opened import close_opened


@pytest.fixture(autouse=True)
def close_opened_protocols():
    yield
    close_opened()
