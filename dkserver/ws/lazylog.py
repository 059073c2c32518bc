"""Autobahn's debug-line arguments, formatted only if a line is written.

Autobahn builds the arguments of its debug lines before calling the logger,
so the work is done with debug logging off too:

- ``_connectionMade`` pretty-prints every configuration attribute of a new
  connection (~30 of them) for one line: ~5 % of the server's CPU in a
  reconnect storm;
- ``hltype``/``hlval`` (a method's qualified name or a value, coloured
  through ``click.style``) are called for a dozen lines per connection, in
  its handshake, its sends and its close (``_connectionLost``: ~2 %).

Autobahn finds these helpers through module-level names of
``autobahn.websocket.protocol`` and ``autobahn.twisted.websocket``;
:func:`install` replaces those names with :class:`Lazy` wrappers, which
call the helper on ``str()`` -- when (and only when) an observer renders
the line.  Every use there is an argument of a log call.
"""

from __future__ import annotations

from collections.abc import Callable
from pprint import pformat
from typing import Any

import autobahn.twisted.websocket as _autobahn_twisted
import autobahn.websocket.protocol as _autobahn_protocol
from autobahn.util import hltype, hlval


class Lazy:
    """``helper(*args)``, done when the object is formatted."""

    __slots__ = ("args", "helper")

    def __init__(self, helper: Callable[..., str], *args: Any) -> None:
        self.helper = helper
        self.args = args

    def __str__(self) -> str:
        return self.helper(*self.args)

    __repr__ = __str__


def _lazy(helper: Callable[..., str]) -> Callable[..., Lazy]:
    def lazy(*args: Any) -> Lazy:
        return Lazy(helper, *args)

    lazy.__name__ = f"lazy_{helper.__name__}"
    return lazy


def lazy_pformat(obj: Any) -> Lazy:
    """``pformat(obj)``, done when formatted."""
    return Lazy(pformat, obj)


def install() -> None:
    """Make Autobahn's server-side debug lines format their arguments lazily."""
    _autobahn_protocol.pformat = lazy_pformat
    for module in (_autobahn_protocol, _autobahn_twisted):
        module.hltype = _lazy(hltype)
        module.hlval = _lazy(hlval)
