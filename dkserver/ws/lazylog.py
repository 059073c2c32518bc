"""Autobahn's debug-line arguments, formatted only if a line is written.

Autobahn's ``_connectionMade`` pretty-prints every configuration attribute
of a new connection (~30 of them) for one debug line, before calling the
logger, so the work is done with debug logging off too: ~5 % of the
server's CPU in a reconnect storm.  It finds ``pformat`` through the
module-level name in ``autobahn.websocket.protocol``; :func:`install`
replaces that name with :class:`LazyPformat`, which formats on ``str()`` --
when (and only when) a debug observer renders the line.
"""

from __future__ import annotations

from pprint import pformat
from typing import Any

import autobahn.websocket.protocol as _autobahn_protocol


class LazyPformat:
    """``pformat(obj)``, done when the object is formatted."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __str__(self) -> str:
        return pformat(self.obj)

    __repr__ = __str__


def install() -> None:
    """Make Autobahn's server-side debug lines format their arguments lazily."""
    _autobahn_protocol.pformat = LazyPformat
