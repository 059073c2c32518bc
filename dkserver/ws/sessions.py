"""Who is connected, and live delivery to them.

:class:`LiveBus` is the one interface the protocol code uses for presence and
live delivery.  :class:`LocalBus` is the in-process implementation; a
multi-node deployment can put a broker (e.g. Redis pub/sub) behind the same
methods without touching the protocol code.
"""

from __future__ import annotations

from typing import Any, Protocol


class Connection(Protocol):
    user_id: str

    def deliver(self, frame: Any, ack: Any) -> None:
        """Queue a prepared frame; ``ack`` is reported once it is read.

        An ack is ``(kind, message_id, user_id, stored_ns)``: ``"d"`` or
        ``"b"``, and when the message was stored (Unix ns, None if not known
        here) for the delivery-latency histogram.  The first three identify
        the delivery."""

    def rescan(self) -> None:
        """Send the stored backlog again (live messages may have been lost)."""


class LiveBus(Protocol):
    def add(self, conn: Connection) -> bool: ...

    def remove(self, conn: Connection) -> bool: ...

    def when_live(self, user_id: str) -> Any:
        """None, or a Deferred the backlog scan waits for: it fires once live
        messages to ``user_id`` reach this process (so that a message stored
        after the scan started is not missed)."""

    def connections(self, user_id: str) -> tuple[Connection, ...]: ...

    def is_online(self, user_id: str) -> bool: ...

    #: A number that changes whenever a user comes online or goes offline,
    #: so an answer built from `online_users` can be reused until it does.
    presence_version: int

    def online_users(self) -> list[str]: ...

    def connection_count(self) -> int: ...

    def all_connections(self) -> list[Connection]: ...

    def send_direct(
        self, to_user: str, frame: Any, message_id: int, stored_ns: int | None = None
    ) -> int: ...

    def send_broadcast(
        self,
        from_user: str,
        frame: Any,
        message_id: int,
        stored_ns: int | None = None,
    ) -> int: ...

    def ask_elsewhere(self, user_id: str, content: str) -> Any:
        """None, or a Deferred of the answer content of a forward request
        sent to the user's connections in another process."""


class LocalBus:
    """Connections of this process, by user id (a user may have several)."""

    def __init__(self) -> None:
        self._by_user: dict[str, dict[Connection, None]] = {}
        self._count = 0
        self.presence_version = 0

    def add(self, conn: Connection) -> bool:
        """Register; True when this makes the user online."""
        conns = self._by_user.setdefault(conn.user_id, {})
        first = not conns
        if conn not in conns:
            conns[conn] = None
            self._count += 1
            if first:
                self.presence_version += 1
        return first

    def remove(self, conn: Connection) -> bool:
        """Unregister; True when the user has no connection left."""
        conns = self._by_user.get(conn.user_id)
        if not conns or conn not in conns:
            return False
        del conns[conn]
        self._count -= 1
        if not conns:
            del self._by_user[conn.user_id]
            self.presence_version += 1
            return True
        return False

    def when_live(self, user_id: str) -> None:
        return None  # one process: delivery is live as soon as add() returns

    def ask_elsewhere(self, user_id: str, content: str) -> None:
        return None  # one process: no other connections than ours

    def connections(self, user_id: str) -> tuple[Connection, ...]:
        return tuple(self._by_user.get(user_id, ()))

    def is_online(self, user_id: str) -> bool:
        return user_id in self._by_user

    def online_users(self) -> list[str]:
        return list(self._by_user)

    def connection_count(self) -> int:
        return self._count

    def all_connections(self) -> list[Connection]:
        return [c for conns in self._by_user.values() for c in conns]

    def send_direct(
        self, to_user: str, frame: Any, message_id: int, stored_ns: int | None = None
    ) -> int:
        conns = self.connections(to_user)
        for conn in conns:
            conn.deliver(frame, ("d", message_id, to_user, stored_ns))
        return len(conns)

    def send_broadcast(
        self,
        from_user: str,
        frame: Any,
        message_id: int,
        stored_ns: int | None = None,
    ) -> int:
        sent = 0
        for user_id, conns in list(self._by_user.items()):
            if user_id == from_user:
                continue
            for conn in list(conns):
                conn.deliver(frame, ("b", message_id, user_id, stored_ns))
                sent += 1
        return sent
