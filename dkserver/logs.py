"""``--log-format json``: one JSON object per log event, safe to ship.

twisted.logger's own ``jsonFileLogObserver`` is made for reading events back
into Twisted (``eventsFromJSONLogFile``): it writes every key of the event,
Twisted's internals included (``log_logger``, ``log_source`` and
``log_format`` as ``{"unpersistable": true}`` stubs or raw text), separates
records with ``\\x1e``, gives the time as a float and the message unformatted,
and has no hook to leave a value out.  An operator's log shipper wants the
opposite: a line per event with an ISO 8601 time, the level, the namespace,
the formatted message and the event's own fields, and nothing secret.  So
this is a small observer of our own:

- only the event's own fields (not ``log_*`` and not the legacy log's
  ``message``/``format``/``system``/... keys), and only plain values
  (strings, numbers, booleans, None, lists of those); anything else is
  written as its type name, so no ``repr`` of a request or a transport can
  carry a token into the log;
- fields whose name says they hold a secret or content (``token``,
  ``signature``, ``public_key``, ``content``, ...) are written as
  ``"[redacted]"``, and the message is formatted from the redacted fields;
- in every string (the message, field values, a failure's text), JWTs and
  long base64 runs (Ed25519 keys, signatures, challenges) are replaced.

Security events keep their ``audit`` field (``"audit": true``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent

__all__ = ["json_line", "json_observer", "log_target", "redact_text"]

REDACTED = "[redacted]"

#: A field whose lower-cased name contains one of these is never written.
SENSITIVE_NAMES = (
    "token",
    "jwt",
    "secret",
    "password",
    "passwd",
    "signature",
    "challenge",
    "key",
    "content",
    "payload",
    "authorization",
    "cookie",
    "invite",
)

#: Keys of twisted.python.log (legacy) events, bridged into twisted.logger.
_LEGACY_KEYS = frozenset(
    {"message", "format", "system", "isError", "time", "why", "failure", "printed"}
)

#: Our own keys; an event field of the same name is written as ``<name>_``.
_RESERVED = frozenset({"timestamp", "level", "namespace", "message", "failure"})

# A JWT: base64url parts, the first one a JSON object ("eyJ"); a truncated
# one (a log call cutting a long field) may have lost its signature.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)?")
# A run of base64 at least 40 long: a 32-byte key is 43-44 characters, a
# signature 86-88, a challenge 44.  Redacted only when it mixes upper case,
# lower case and digits, as random base64 does and paths and ids do not.
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{40,}={0,2}")


def _looks_random(run: str) -> bool:
    return (
        any(c.isupper() for c in run)
        and any(c.islower() for c in run)
        and any(c.isdigit() for c in run)
    )


def redact_text(text: str) -> str:
    """``text`` with JWTs and key-like base64 runs replaced."""
    if len(text) < 40:
        return text
    text = _JWT.sub("[jwt]", text)
    return _BASE64_RUN.sub(
        lambda m: REDACTED if _looks_random(m.group()) else m.group(), text
    )


def _sensitive(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SENSITIVE_NAMES)


def _plain(value: Any) -> Any:
    """A JSON value for a field: scalars as they are (strings redacted),
    lists of scalars, anything else by its type name."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)[:50]
        if all(v is None or isinstance(v, bool | int | float | str) for v in items):
            return [_plain(v) for v in items]
    return f"<{type(value).__name__}>"


def _level(event: Mapping[str, Any]) -> str:
    level = event.get("log_level")
    name = getattr(level, "name", None)
    if name:
        return name
    return "error" if event.get("isError") else "info"


def _timestamp(event: Mapping[str, Any]) -> str:
    when = event.get("log_time")
    if when is None:
        when = event.get("time")
    try:
        moment = datetime.fromtimestamp(float(when), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        moment = datetime.now(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def json_line(event: Mapping[str, Any]) -> str:
    """One event as one line of JSON (with the newline)."""
    fields: dict[str, Any] = {}
    formatting: dict[str, Any] = {}
    for name, value in event.items():
        if name.startswith("log_") or name in _LEGACY_KEYS:
            continue
        safe = REDACTED if _sensitive(name) else _plain(value)
        formatting[name] = safe
        fields[f"{name}_" if name in _RESERVED else name] = safe
    # The message is formatted from the redacted fields only (plus the
    # format, and the text a legacy event carries), so a format string
    # naming a secret field shows "[redacted]" rather than its value.
    formattable = {"log_format": event.get("log_format"), **formatting}
    if "log_text" in event:  # legacy events: log_format is "{log_text}"
        formattable["log_text"] = str(event["log_text"])
    message = formatEvent(formattable)
    if message.startswith("Unable to format event"):
        # A format our plain values cannot fill ("{request.uri}"): twisted's
        # fallback is the repr of the event; the bare format is safer.
        message = str(event.get("log_format") or "")
    if not message and event.get("log_io"):
        message = str(event["log_io"])
    record: dict[str, Any] = {
        "timestamp": _timestamp(event),
        "level": _level(event),
        "namespace": str(event.get("log_namespace", "")),
        "message": redact_text(message),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["failure"] = {
                "type": failure.type.__name__,
                "value": redact_text(failure.getErrorMessage()),
                "traceback": redact_text(failure.getTraceback()),
            }
        except Exception:
            record["failure"] = {"type": "<unprintable failure>"}
    record.update(fields)
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def json_observer(out: IO[str]) -> ILogObserver:
    """Write each event to ``out`` as :func:`json_line` (FileLogObserver
    flushes after each event, as twistd's text observer does)."""
    return FileLogObserver(out, json_line)


def log_target(twistd_options: Mapping[str, Any] | None) -> IO[str]:
    """Where twistd would write its text log, for the same options.

    twistd's choice (``UnixAppLogger._getLogObserver``): ``--logfile -`` or
    ``-n`` without ``--logfile`` is stdout (systemd's journal under a unit);
    otherwise the file (``twistd.log`` by default), rotated as twistd's own
    is (by size, and on SIGUSR1).
    """
    options = twistd_options or {}
    name = options.get("logfile") or ""
    nodaemon = bool(options.get("nodaemon"))
    if name == "-" or (nodaemon and not name) or not twistd_options:
        return sys.stdout
    from twisted.python.logfile import LogFile

    log_file = LogFile.fromFullPath(name)
    import signal

    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum, frame) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return log_file
