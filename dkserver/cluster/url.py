"""``--redis`` / ``DK_REDIS_URL``: ``redis://[:password@]host[:port][/db]``."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 6379


class RedisUrlError(ValueError):
    """The text is not a usable Redis URL; the message says why (no password)."""


@dataclass(frozen=True)
class RedisUrl:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = field(default=None, repr=False)

    @property
    def redacted(self) -> str:
        """For logs and errors: never the password."""
        auth = "***@" if self.password is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port}/{self.db}"

    def __str__(self) -> str:
        return self.redacted


def parse_redis_url(text: str) -> RedisUrl:
    raw = text.strip()
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as e:  # a bad port or bracket
        raise RedisUrlError(f"not a redis://host:port/db URL ({e})") from None
    if parts.scheme != "redis":
        what = (
            "rediss:// (TLS) is not supported"
            if parts.scheme == "rediss"
            else ("must start with redis://")
        )
        raise RedisUrlError(what)
    if not parts.hostname:
        raise RedisUrlError("names no host (redis://host:port/db)")
    if parts.query or parts.fragment:
        raise RedisUrlError("takes no ?options or #fragment")
    path = parts.path.lstrip("/")
    if path and not path.isdigit():
        raise RedisUrlError(f"database must be a number, got {path!r}")
    db = int(path) if path else 0
    if db > 15:
        raise RedisUrlError(f"database {db} is out of range 0-15")
    password = unquote(parts.password) if parts.password is not None else None
    return RedisUrl(parts.hostname, port or DEFAULT_PORT, db, password)


_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def check_node_id(text: str) -> str:
    if not _NODE_ID.match(text):
        raise ValueError(
            f"{text!r} must be 1-64 letters, digits, '.', '_', ':' or '-' "
            "starting with a letter or digit"
        )
    return text


def default_node_id(https: str) -> str:
    """Unique and stable per host and HTTPS port: a restarted node keeps its
    id (so it closes only its own left-open sessions)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "host"
    port = re.search(r"(?:port=|:)(\d{1,5})(?::|$)", https)
    return f"{host}:{port.group(1) if port else '0'}"
