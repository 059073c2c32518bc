"""Time columns of the tracker and API tables: written as fixed-width UTC
text, read back as Go's ``time.Time`` marshals them."""

from __future__ import annotations

import pytest

from dkserver import timestamps


@pytest.mark.parametrize(
    ("stored", "wire"),
    [
        ("2026-11-26 01:45:42.123456789-03:00", "2026-11-26T04:45:42.123456789Z"),
        ("2026-11-26 01:45:42.5+00:00", "2026-11-26T01:45:42.5Z"),
        ("2026-11-26 01:45:42", "2026-11-26T01:45:42Z"),
        ("2026-11-26T01:45:42.100Z", "2026-11-26T01:45:42.1Z"),
        ("2026-11-26 04:45:42.000000000+00:00", "2026-11-26T04:45:42Z"),
        (None, "0001-01-01T00:00:00Z"),
        ("", "0001-01-01T00:00:00Z"),
        ("yesterday", "0001-01-01T00:00:00Z"),
        ("0001-01-01 00:00:00+01:00", "0001-01-01T00:00:00Z"),
        (1234, "0001-01-01T00:00:00Z"),
    ],
)
def test_stored_times_read_as_go_marshals_them(stored, wire):
    assert timestamps.stored_to_rfc3339(stored) == wire


def test_storage_text_is_fixed_width_utc_and_sorts_in_time_order():
    instants = [0, 5, 10**9, 1_795_668_340_123_000_000, 1_795_668_340_999_999_999]
    texts = [timestamps.utc_storage_text(ns) for ns in instants]
    assert texts[0] == "1970-01-01 00:00:00.000000000+00:00"
    assert texts[3] == "2026-11-26 04:45:40.123000000+00:00"
    assert {len(t) for t in texts} == {35}
    assert sorted(texts) == texts
    for ns, text in zip(instants, texts, strict=True):
        assert timestamps.parse(text).unix_nanos == ns
    assert timestamps.utc_storage_text(-62135596800 * 10**9).startswith("0001-")
    assert timestamps.utc_storage_text(-62135596801 * 10**9) is None
