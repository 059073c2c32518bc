"""Python client library of dkserver (and the ``dk`` command line).

Public API (imported lazily, so ``python -m dkserver.client`` can report a
missing native dependency instead of failing on import)::

    from dkserver.client import Client, Session, Home, Identity

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

_EXPORTS = {
    "Client": "dkserver.client.account",
    "Message": "dkserver.client.account",
    "NotInitialised": "dkserver.client.account",
    "AuthError": "dkserver.client.account",
    "UnknownUser": "dkserver.client.account",
    "Api": "dkserver.client.api",
    "ApiError": "dkserver.client.api",
    "ClientError": "dkserver.client.api",
    "Unreachable": "dkserver.client.api",
    "make_ssl_context": "dkserver.client.api",
    "Home": "dkserver.client.keys",
    "Identity": "dkserver.client.keys",
    "Session": "dkserver.client.session",
    "SessionClosed": "dkserver.client.session",
    "Backoff": "dkserver.client.session",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dkserver.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
