"""The sd_notify sender and the watchdog setting, on real datagram sockets."""

from __future__ import annotations

import socket
import uuid

from dkserver.systemd import Notifier, watchdog_interval


def receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    sock.settimeout(5)
    return sock


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.send(READY=1) is False


def test_fields_go_out_as_one_datagram_of_lines_to_an_abstract_socket():
    address = f"@dk-unit-{uuid.uuid4().hex}"
    sock = receiver(address)
    try:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
        assert notifier.send(READY=1, STATUS="serving\nHTTPS") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving HTTPS"
        notifier.close()
    finally:
        sock.close()


def test_a_path_socket_and_a_vanished_one(tmp_path):
    path = str(tmp_path / "n")
    sock = receiver(path)
    notifier = Notifier(path)
    assert notifier.send(WATCHDOG=1)
    assert sock.recv(4096) == b"WATCHDOG=1"
    sock.close()
    (tmp_path / "n").unlink()
    # Gone: the send fails (logged once), nothing raises.
    assert notifier.send(WATCHDOG=1) is False
    assert notifier.send(WATCHDOG=1) is False
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process():
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}, 42) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "42"}, 42)
    assert (
        watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "7"}, 42)
        is None
    )
    assert watchdog_interval({}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}, 42) is None
