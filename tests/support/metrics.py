"""Reading a server's Prometheus text in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one Prometheus sample, None if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def scrape(server) -> str:
    """``GET /metrics`` of an in-process server or a daemon's handle."""
    response = await server.http.get(server.url("/metrics"))
    assert response.code == 200
    ctype = response.headers.getRawHeaders(b"content-type")[0]
    assert ctype.startswith(b"text/plain"), ctype
    return (await response.content()).decode()
