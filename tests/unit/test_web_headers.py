"""The constant response headers, set without Headers' per-call checks."""

from __future__ import annotations

from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers

from dkserver.web.headers import HttpDate, canonical, set_headers


def test_set_headers_is_what_setRawHeaders_would_store():
    pairs = ((b"x-frame-options", b"DENY"), (b"Referrer-Policy", b"no-referrer"))
    fast, slow = Headers(), Headers()
    set_headers(fast, canonical(pairs))
    for name, value in pairs:
        slow.setRawHeaders(name, [value])
    assert list(fast.getAllRawHeaders()) == list(slow.getAllRawHeaders())
    assert fast.getRawHeaders(b"X-Frame-Options") == [b"DENY"]


def test_each_response_gets_lists_of_its_own():
    pairs = canonical(((b"X-Frame-Options", b"DENY"),))
    first, second = Headers(), Headers()
    set_headers(first, pairs)
    set_headers(second, pairs)
    first.addRawHeader(b"X-Frame-Options", b"SAMEORIGIN")
    assert second.getRawHeaders(b"X-Frame-Options") == [b"DENY"]


def test_the_date_is_formatted_once_per_second():
    now = [1_000_000.2]
    date = HttpDate(lambda: now[0])
    first = date()
    assert first == datetimeToString(1_000_000)
    now[0] = 1_000_000.9
    assert date() is first
    now[0] = 1_000_001.0
    assert date() == datetimeToString(1_000_001)
