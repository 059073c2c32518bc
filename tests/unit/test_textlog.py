"""dkserver's text observer writes twistd's lines, byte for byte
(dkserver.textlog), and is used where twistd would write to stdout."""

from __future__ import annotations

import io

from twisted.logger import Logger, LogLevel, textFileLogObserver

from dkserver.tap import _text_to_stdout
from dkserver.textlog import _SecondClock, text_observer


def _lines(observer_for, events) -> str:
    out = io.StringIO()
    observer = observer_for(out)
    for event in events:
        observer(dict(event))
    return out.getvalue()


def test_the_lines_are_twisteds():
    base = 1_800_000_000.0
    events = [
        {
            "log_format": "user {user_id} connected from {client_ip}",
            "user_id": "alice",
            "client_ip": "127.0.0.1",
            "log_level": LogLevel.info,
            "log_namespace": "dkserver.ws.protocol.DkServerProtocol",
            "log_time": base + offset,
        }
        for offset in (0.0, 0.25, 0.999, 1.0, 61.5, 3600.01)
    ]
    events.append({"log_format": "no time", "log_level": LogLevel.warn})
    events.append(
        {"log_format": "{x}", "x": 1, "log_system": "sys", "log_time": base + 2}
    )
    assert _lines(text_observer, events) == _lines(textFileLogObserver, events)
    assert _lines(text_observer, events).count("\n") == len(events)


def test_the_time_is_formatted_once_a_second(monkeypatch):
    import dkserver.textlog as textlog

    calls = []
    real = textlog.formatTime
    monkeypatch.setattr(textlog, "formatTime", lambda t: calls.append(t) or real(t))
    clock = _SecondClock()
    assert clock(10.1) == clock(10.9) == real(10)
    assert clock(11.0) == real(11)
    assert calls == [10, 11]


def test_used_only_where_twistd_writes_text_to_stdout():
    assert _text_to_stdout({"nodaemon": True, "logfile": None})
    assert _text_to_stdout({"nodaemon": False, "logfile": "-"})
    assert not _text_to_stdout({"nodaemon": True, "logfile": "dk.log"})
    assert not _text_to_stdout({"nodaemon": True, "syslog": True})
    assert not _text_to_stdout({"nodaemon": True, "logger": "my.observer"})
    assert not _text_to_stdout(None)


def test_a_logger_event_goes_through():
    out = io.StringIO()
    log = Logger(namespace="t", observer=text_observer(out))
    log.info("hello {who}", who="world")
    assert out.getvalue().endswith(" [t#info] hello world\n")
