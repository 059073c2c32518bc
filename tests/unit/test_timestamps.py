"""The timestamp functions: the original's column format on the way in, the
client's exact text (or the original's rendering) on the way out."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dkserver import timestamps

#: The layout the original's SQLite driver reads and writes first
#: (mattn/go-sqlite3 ``2006-01-02 15:04:05.999999999-07:00``).
GO_COLUMN = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"[+-][0-9]{2}:[0-9]{2}"
)


@pytest.mark.parametrize(
    ("client", "column", "kept"),
    [
        # what clients send: rendering the column gives it back, no copy kept
        ("2026-12-01T18:30:36.417215494Z", "2026-12-01 18:30:36.417215494+00:00", None),
        ("2026-12-01T15:30:36.4-03:00", "2026-12-01 15:30:36.4-03:00", None),
        ("2026-12-02T00:00:36+05:30", "2026-12-02 00:00:36+05:30", None),
        ("2026-12-01T18:30:36.120000000Z", "2026-12-01 18:30:36.120000000+00:00", None),
        ("2026-12-01T18:30:36.5+00:30", "2026-12-01 18:30:36.5+00:30", None),
        # the column would render as ...Z or with T: the exact text is kept
        ("2026-12-01T18:30:36.417+00:00", "2026-12-01 18:30:36.417+00:00", "="),
        ("2026-12-01T18:30:36-00:00", "2026-12-01 18:30:36-00:00", "="),
        ("2026-12-01T18:30:36.1z", "2026-12-01 18:30:36.1+00:00", "="),
        ("2026-12-01t18:30:36.1Z", "2026-12-01 18:30:36.1+00:00", "="),
        ("2026-12-01 18:30:36.1-03:00", "2026-12-01 18:30:36.1-03:00", "="),
    ],
)
def test_storage_columns_write_the_original_format_and_keep_text_only_when_needed(
    client, column, kept
):
    stored, client_text = timestamps.storage_columns(client)
    assert stored == column
    assert GO_COLUMN.fullmatch(stored)
    assert client_text == (client if kept == "=" else None)


@pytest.mark.parametrize(
    ("stored", "rendered"),
    [
        # the original's own rows (tests/fixtures/original-server.db)
        ("2026-11-26 01:45:42.123456789-03:00", "2026-11-26T01:45:42.123456789-03:00"),
        ("2026-11-26 04:45:43.000000001+00:00", "2026-11-26T04:45:43.000000001Z"),
        ("2026-11-26 10:15:44.987654321+05:30", "2026-11-26T10:15:44.987654321+05:30"),
        # a negative zero offset is still UTC: Go writes Z for any zero offset
        ("2026-11-26 04:45:43-00:00", "2026-11-26T04:45:43Z"),
        # the fraction as stored, trailing zeros and all
        ("2026-11-26 04:45:43.120000000+00:00", "2026-11-26T04:45:43.120000000Z"),
        # naive values (the original's driver writes some) are UTC
        ("2026-11-26 04:45:43.000000001", "2026-11-26T04:45:43.000000001Z"),
        ("2026-11-26 04:45:43", "2026-11-26T04:45:43Z"),
        ("2026-11-26T04:45:43.5", "2026-11-26T04:45:43.5Z"),
        ("2026-11-26 04:45", "2026-11-26T04:45:00Z"),
        ("2026-11-26", "2026-11-26T00:00:00Z"),
        # already RFC 3339, in either case
        ("2026-11-26T04:45:43.5Z", "2026-11-26T04:45:43.5Z"),
        ("2026-11-26t04:45:43.5z", "2026-11-26T04:45:43.5Z"),
        ("2026-11-26T04:45:43.5-03:00", "2026-11-26T04:45:43.5-03:00"),
    ],
)
def test_rows_without_client_text_render_as_the_original_renders_them(stored, rendered):
    assert timestamps.from_storage(stored) == rendered
    instant = timestamps.parse(rendered).unix_nanos  # valid RFC 3339
    if len(stored) >= 19:  # parse() needs seconds; the short forms mean :00
        assert timestamps.parse(stored, allow_naive=True).unix_nanos == instant


def test_stored_text_in_no_known_form_is_handed_on_unchanged():
    assert timestamps.from_storage("yesterday") == "yesterday"
    assert timestamps.from_storage("2026-11-26 04:45:43+0000") == (
        "2026-11-26 04:45:43+0000"
    )


@st.composite
def client_timestamps(draw) -> str:
    """Any text `timestamps.parse` accepts from a client."""
    year = draw(st.integers(1, 9999))
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 28))
    hour, minute, second = (
        draw(st.integers(0, 23)),
        draw(st.integers(0, 59)),
        draw(st.integers(0, 59)),
    )
    sep = draw(st.sampled_from("Tt "))
    frac = draw(st.text("0123456789", min_size=0, max_size=9))
    zone = draw(
        st.one_of(
            st.sampled_from(["Z", "z", "+00:00", "-00:00"]),
            st.builds(
                "{}{:02d}:{:02d}".format,
                st.sampled_from("+-"),
                st.integers(0, 23),
                st.integers(0, 59),
            ),
        )
    )
    return (
        f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}"
        + (f".{frac}" if frac else "")
        + zone
    )


@given(client_timestamps())
def test_stored_columns_give_back_the_exact_text_and_instant(text):
    instant = timestamps.parse(text).unix_nanos
    stored, client_text = timestamps.storage_columns(text)
    assert GO_COLUMN.fullmatch(stored)
    assert timestamps.parse(stored).unix_nanos == instant
    rendered = timestamps.from_storage(stored)
    # what the read path hands out: the kept text, else the rendered column
    assert (client_text or rendered) == text
    # a copy is kept exactly when rendering alone would not give the text back
    assert (client_text is None) == (rendered == text)


def test_server_receive_time_is_utc_z_and_needs_no_copy():
    now = timestamps.now(1_795_668_343_000_000_001)
    assert now.text == "2026-11-26T04:45:43.000000001Z"
    assert timestamps.storage_columns(now.text) == (
        "2026-11-26 04:45:43.000000001+00:00",
        None,
    )


@pytest.mark.parametrize(
    "text, error",
    [
        ("2026-02-30T00:00:00Z", "timestamp date does not exist"),
        ("2026-13-01T00:00:00Z", "timestamp fields out of range"),
        ("0000-01-01T00:00:00Z", "timestamp date does not exist"),
        ("2026-02-30T25:00:00Z", "timestamp fields out of range"),
    ],
)
def test_a_bad_date_is_refused_every_time_although_dates_are_cached(text, error):
    for _ in range(3):
        with pytest.raises(timestamps.TimestampError, match=error):
            timestamps.parse(text)


def test_cached_dates_give_the_calendar_instant_across_a_clear(monkeypatch):
    monkeypatch.setattr(timestamps, "_MAX_MIDNIGHTS", 2)
    texts = [
        "2024-02-29T23:59:60.5+01:00",
        "1970-01-01T00:00:00Z",
        "2026-12-02T19:30:28.123456789-03:30",
        "2024-02-29T12:00:00Z",
    ]
    for _ in range(2):
        got = [timestamps.parse(t).unix_nanos for t in texts]
        assert got == [
            1709247600 * 10**9 + 5 * 10**8,
            0,
            1796252428 * 10**9 + 123456789,
            1709208000 * 10**9,
        ]
        assert len(timestamps._midnights) <= 2


@pytest.mark.parametrize(
    "ns",
    [0, 1, 999_999_999, 1_764_716_428_123_456_789, 1_764_716_428_000_000_001, -1],
)
def test_storage_from_unix_nanos_is_the_storage_form_of_the_rfc3339_text(ns):
    for _ in range(2):  # computed, then from the per-second cache
        assert timestamps.storage_from_unix_nanos(ns) == timestamps.to_storage(
            timestamps.from_unix_nanos(ns).text
        )
