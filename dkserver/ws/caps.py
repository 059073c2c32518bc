"""Connection caps per client IP and per user, for one process.

A reservation is taken before the WebSocket upgrade and released exactly once
when the connection ends (or the upgrade does not happen).  The cluster
version (:class:`dkserver.cluster.limits.SharedConnections`) has the same two
methods, its ``reserve`` answering through a Deferred.
"""

from __future__ import annotations

#: What ``reserve`` hands out and ``release`` takes back: (ip, user id).
Reservation = tuple[str, str]


class ConnectionCounts:
    """Connections (including handshakes in progress) per IP and per user."""

    def __init__(self) -> None:
        self._per_ip: dict[str, int] = {}
        self._per_user: dict[str, int] = {}

    def reserve(
        self, ip: str, user_id: str, max_ip: int, max_user: int
    ) -> Reservation | None:
        """Count a new connection, or None if either cap is full."""
        if (
            self._per_ip.get(ip, 0) >= max_ip
            or self._per_user.get(user_id, 0) >= max_user
        ):
            return None
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        return (ip, user_id)

    def release(self, reservation: Reservation) -> None:
        ip, user_id = reservation
        for counts, key in ((self._per_ip, ip), (self._per_user, user_id)):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
