"""URLs that are not UTF-8 (found probing the server beside the schemathesis
run, which only generates UTF-8) got Klein's own text 400, not the JSON error."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.support.client import get

UTF8_ERROR = {"error": True, "message": "The URL path and Host must be UTF-8"}


@pytest.mark.parametrize(
    "path",
    ["/auth/users/%ff", "/auth/check-userid/%c0%af", "/static/%fe", "/download/%ff"],
)
@pytest_twisted.ensureDeferred
async def test_non_utf8_url_path_gets_the_json_400(server, path):
    assert await get(server, path) == (400, UTF8_ERROR)
    # Percent-encoded UTF-8 is still routed as before.
    assert await get(server, "/auth/check-userid/%C3%A9") == (200, {"exists": False})


@pytest_twisted.ensureDeferred
async def test_non_utf8_host_header_gets_the_json_400(server):
    assert await get(server, "/active-users", {"Host": [b"\xff\xfe"]}) == (
        400,
        UTF8_ERROR,
    )
