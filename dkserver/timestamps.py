"""Message timestamps kept exact to the nanosecond, and to the character.

Signatures cover the sender's instant as Unix nanoseconds, and Python's
``datetime`` keeps only microseconds, so dkserver never round-trips a message
timestamp through ``datetime``.  It keeps the client's text, stores it in the
original Go server's column format (``2026-11-26 01:45:42.123456789-03:00``,
which the original must still be able to read) and, where rendering that
column would not give back the client's exact text (``+00:00`` instead of
``Z``, a space or lower-case ``t``/``z``), also keeps the text itself.  Rows
without the client's text are rendered as the original renders them.
"""

from __future__ import annotations

import calendar
import datetime
import re
import time
from dataclasses import dataclass

_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))?"
)

#: The timestamp of system frames, as the original sends Go's zero time.
ZERO_TIME = "0001-01-01T00:00:00Z"


class TimestampError(ValueError):
    """The text is not an RFC 3339 timestamp dkserver can keep exactly."""


@dataclass(frozen=True, slots=True)
class Timestamp:
    """An instant with the exact text it arrived as."""

    unix_nanos: int
    text: str


def parse(text: str, *, allow_naive: bool = False) -> Timestamp:
    """Parse RFC 3339 (``T`` or space separated, up to nine fraction digits).

    A missing zone is accepted only with ``allow_naive`` (rows written by the
    original server's SQLite driver may lack one) and means UTC.
    """
    if not isinstance(text, str):
        raise TimestampError("timestamp must be a string")
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise TimestampError(f"timestamp is not RFC 3339: {text[:64]!r}")
    _, _, _, hh, mm, ss, frac, zulu, sign, off_h, off_m = m.groups()
    if not (zulu or sign) and not allow_naive:
        raise TimestampError("timestamp has no time zone offset")
    hour, minute, second = int(hh), int(mm), int(ss)
    if hour >= 24 or minute >= 60 or second > 60:
        raise TimestampError("timestamp fields out of range")
    midnight = _midnight(text[:10])
    seconds = midnight + hour * 3600 + minute * 60 + second
    if sign:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            raise TimestampError("timestamp offset out of range")
        offset = oh * 3600 + om * 60
        seconds += -offset if sign == "+" else offset
    nanos = int(frac.ljust(9, "0")) if frac else 0
    return Timestamp(seconds * 1_000_000_000 + nanos, text)


#: Unix seconds at midnight UTC of a ``YYYY-MM-DD`` text, or the error it
#: raises: every message carries a timestamp, and a day's messages share
#: one date, so the calendar work is done once per date seen.
_midnights: dict[str, int | TimestampError] = {}
#: Bound on that cache (cleared when exceeded).
_MAX_MIDNIGHTS = 4096


def _midnight(date: str) -> int:
    found = _midnights.get(date)
    if found is None:
        if len(_midnights) >= _MAX_MIDNIGHTS:
            _midnights.clear()
        found = _midnights[date] = _compute_midnight(date)
    if isinstance(found, TimestampError):
        raise TimestampError(*found.args)
    return found


def _compute_midnight(date: str) -> int | TimestampError:
    year, month, day = int(date[:4]), int(date[5:7]), int(date[8:10])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return TimestampError("timestamp fields out of range")
    try:
        days_in_month = calendar.monthrange(year, month)[1]
    except ValueError:
        return TimestampError("timestamp year out of range")
    if year < 1 or day > days_in_month:
        return TimestampError("timestamp date does not exist")
    return calendar.timegm((year, month, day, 0, 0, 0))


def to_storage(text: str) -> str:
    """Format a parsed timestamp's text as the original server stores it."""
    out = text[:10] + " " + text[11:]
    if out.endswith(("Z", "z")):
        out = out[:-1] + "+00:00"
    return out


def storage_columns(text: str) -> tuple[str, str | None]:
    """The ``timestamp`` and ``client_timestamp`` columns of a parsed text.

    The second is ``None`` when :func:`from_storage` of the first gives back
    ``text`` exactly (``T``, and ``Z`` or a non-zero offset: what clients
    send), so most rows carry no copy.  This runs for every stored message,
    so it compares characters instead of rendering: ``text`` passed `parse`
    without ``allow_naive``, so it ends in ``Z``/``z`` or ``±HH:MM``.
    """
    rendered_alike = text[10] == "T" and (
        text[-1] == "Z" or (text[-6] in "+-" and text[-5:] != "00:00")
    )
    return to_storage(text), None if rendered_alike else text


#: What the original's SQLite driver may have written (mattn/go-sqlite3's
#: ``SQLiteTimestampFormats``, plus a trailing ``Z`` it strips before parsing).
_STORED = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:[Tt ]([0-9]{2}:[0-9]{2})(:[0-9]{2}(?:\.[0-9]+)?)?)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def from_storage(text: str) -> str:
    """Render a stored ``timestamp`` column as the original server does.

    ``T`` between date and time, the stored fraction as stored, the stored
    offset, and ``Z`` for a zero or missing offset (naive values are UTC;
    Go's RFC 3339 layout writes ``Z`` for any zero offset).  Text in no
    known form is handed on unchanged.
    """
    m = _STORED.fullmatch(text)
    if m is None:
        return text
    date, hour_minute, seconds, zone = m.groups()
    if zone is None or zone in ("Z", "z", "+00:00", "-00:00"):
        zone = "Z"
    return f"{date}T{hour_minute or '00:00'}{seconds or ':00'}{zone}"


def now(clock_ns: int | None = None) -> Timestamp:
    """The server's receive time, UTC with nanoseconds."""
    ns = time.time_ns() if clock_ns is None else clock_ns
    return from_unix_nanos(ns)


_last_second: tuple[int, str] = (-1, "")


def from_unix_nanos(ns: int) -> Timestamp:
    global _last_second
    secs, frac = divmod(ns, 1_000_000_000)
    cached_secs, base = _last_second  # one tuple: safe across threads
    if cached_secs != secs:
        base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        _last_second = (secs, base)
    return Timestamp(ns, f"{base}.{frac:09d}Z")


_last_storage_second: tuple[int, str] = (-1, "")


def storage_from_unix_nanos(ns: int) -> str:
    """A server instant in the original's column format: ``to_storage`` of
    :func:`from_unix_nanos`'s text, written directly with a per-second
    cache of its own (it runs for every stored message)."""
    global _last_storage_second
    secs, frac = divmod(ns, 1_000_000_000)
    cached_secs, base = _last_storage_second  # one tuple: safe across threads
    if cached_secs != secs:
        base = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
        _last_storage_second = (secs, base)
    return f"{base}.{frac:09d}+00:00"


_EPOCH = datetime.datetime(1970, 1, 1)


def utc_storage_text(ns: int) -> str | None:
    """``ns`` as fixed-width UTC column text (``2026-11-26 04:45:42.123456789+00:00``).

    Fixed width and one offset make the text sort in time order, so ``ORDER
    BY updated_at`` needs no parsing.  ``None`` outside years 1-9999.
    """
    secs, frac = divmod(ns, 1_000_000_000)
    try:
        base = (_EPOCH + datetime.timedelta(seconds=secs)).isoformat(" ")
    except OverflowError:
        return None
    return f"{base}.{frac:09d}+00:00"


def stored_to_rfc3339(text: object) -> str:
    """A row's time column as Go's ``time.Time`` marshals it, in UTC.

    Go writes RFC 3339 with the fraction's trailing zeros trimmed.  Legacy
    text (naive, any offset) is accepted; NULL or text that is no timestamp
    becomes Go's zero time, as a failed scan into ``time.Time`` would leave it.
    """
    try:
        ns = parse(text, allow_naive=True).unix_nanos  # type: ignore[arg-type]
    except TimestampError:
        return ZERO_TIME
    stored = utc_storage_text(ns)
    if stored is None:
        return ZERO_TIME
    day_time, frac = stored[:19], stored[20:29].rstrip("0")
    return f"{day_time[:10]}T{day_time[11:]}{'.' + frac if frac else ''}Z"
