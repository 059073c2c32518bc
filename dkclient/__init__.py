"""Python client library of dkserver (and the ``dk`` command line).

Public API (imported lazily, so ``python -m dkclient`` can report a
missing native dependency instead of failing on import)::

    from dkclient import Client, Session, Home, Identity

    client = Client(home="~/.config/dk", server="https://dk.example")
    client.login()                          # or implicitly, on demand
    async with Session(client) as session:
        await session.send_direct("bob", "hello")
        message = await session.receive()   # verified and decrypted

The wire contract is PROTOCOL.md; the crypto is in :mod:`.crypto`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0.dev0"  # released with dkserver: same version

_EXPORTS = {
    "Client": "dkclient.account",
    "Message": "dkclient.account",
    "NotInitialised": "dkclient.account",
    "AuthError": "dkclient.account",
    "UnknownUser": "dkclient.account",
    "Api": "dkclient.api",
    "ApiError": "dkclient.api",
    "ClientError": "dkclient.api",
    "Unreachable": "dkclient.api",
    "make_ssl_context": "dkclient.api",
    "Home": "dkclient.keys",
    "Identity": "dkclient.keys",
    "Session": "dkclient.session",
    "SessionClosed": "dkclient.session",
    "Backoff": "dkclient.session",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dkclient' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
