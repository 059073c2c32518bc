"""How the per-IP limits and the logs name a client."""

from __future__ import annotations

from twisted.internet.interfaces import IAddress


def peer_host(address: IAddress | None) -> str:
    """The address's IP (v4 or v6); "unknown" for a UNIX socket or none.

    Behind a balancer speaking the PROXY protocol the address is the one its
    header named (:mod:`dkserver.proxyproto`), for every layer above it.
    """
    return getattr(address, "host", None) or "unknown"
