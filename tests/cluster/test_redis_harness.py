"""The private Redis the cluster tests run against: fresh, restartable."""

from __future__ import annotations

import socket

from tests.support.redis import ping


def _command(server, *words: str) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall((" ".join(words) + "\r\n").encode())
        return s.recv(256)


def test_each_test_gets_an_empty_server(redis_server):
    assert _command(redis_server, "DBSIZE") == b":0\r\n"
    assert _command(redis_server, "SET", "k", "v") == b"+OK\r\n"


def test_a_second_test_does_not_see_the_first_ones_keys(redis_server):
    assert _command(redis_server, "DBSIZE") == b":0\r\n"


def test_restart_on_the_same_port_keeps_nothing(redis_server):
    if not redis_server.private:
        return  # an external server is not ours to restart
    _command(redis_server, "SET", "k", "v")
    redis_server.stop()
    assert not ping(redis_server.host, redis_server.port)
    redis_server.start()
    assert _command(redis_server, "DBSIZE") == b":0\r\n"
