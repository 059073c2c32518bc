"""ServerTLS without a listener: what it logs and reports for a pair."""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs

from dkserver.tls import ServerTLS
from tests.support.tlsclient import write_pair


def _events(cert, key, **kwargs):
    loaded = []
    with capturedLogs() as events:
        tls = ServerTLS(
            str(cert), str(key), on_loaded=lambda pair, r: loaded.append(pair)
        )
    return tls, events, loaded


def test_a_pair_close_to_expiry_is_a_warning(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.key"
    fp = write_pair(cert, key, kind="ec", days=3)
    tls, events, loaded = _events(cert, key)
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert [e["fingerprint"] for e in warnings] == [fp]
    assert warnings[0]["days"] in (2, 3)
    assert loaded[0].fingerprint == fp == tls.current.fingerprint
    assert loaded[0].not_after.timestamp() > 0


def test_an_expired_pair_is_an_error_but_served(tmp_path):
    """Refusing to start would take the whole service down; clients refuse
    an expired certificate themselves, and the error line says why."""
    cert, key = tmp_path / "c.pem", tmp_path / "k.key"
    fp = write_pair(cert, key, kind="ec", days=-1)
    tls, events, _ = _events(cert, key)
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert [e["fingerprint"] for e in errors] == [fp]
    assert tls.current.fingerprint == fp


def test_a_pair_far_from_expiry_is_logged_at_info_only(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.key"
    fp = write_pair(cert, key, kind="ec", days=90)
    _, events, _ = _events(cert, key)
    assert [e["log_level"] for e in events] == [LogLevel.info]
    assert events[0]["fingerprint"] == fp
