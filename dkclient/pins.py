"""Trust on first use: the peers' public keys this client has pinned.

The server hands out every user's public key (``GET /auth/users/{id}``), so
a server that swapped one could read the direct messages sent to that user
and sign messages in their name.  The first key seen for a user on a server
is therefore pinned in ``known_keys.json`` in home; messages are verified
and encrypted against the pinned key only, and a different key from the
server is flagged (receiving) or refused (sending) until the user accepts it
deliberately (``dk trust USER``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dkclient.api import ClientError
from dkclient.exits import EXIT_KEY_CHANGED
from dkclient.keys import write_private

FIRST_USE = "first use"
TRUSTED = "dk trust"


def fingerprint(public_key_b64: str) -> str:
    """``SHA256:`` and the unpadded base64 SHA-256 of the raw key, as ssh
    shows host keys: short enough to read out, and the same everywhere."""
    try:
        raw = base64.b64decode(public_key_b64, validate=True)
    except (binascii.Error, ValueError):
        raw = public_key_b64.encode("utf-8", "replace")
    digest = hashlib.sha256(raw).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Pin:
    public_key: str
    pinned_at: str  # UTC, RFC 3339 to the second
    how: str  # FIRST_USE or TRUSTED

    def to_json(self) -> dict[str, str]:
        return {
            "public_key": self.public_key,
            "pinned_at": self.pinned_at,
            "how": self.how,
        }


@dataclass(frozen=True)
class KeyChange:
    """The server's key for ``user_id`` is not the pinned one."""

    user_id: str
    server: str
    pinned: Pin
    current: str

    @property
    def trust_command(self) -> str:
        return f"dk trust {shlex.quote(self.user_id)}"

    def warning_lines(self) -> list[str]:
        """The loud warning ``dk`` prints (one line each, for stderr)."""
        user = self.user_id
        return [
            f"WARNING: THE KEY OF {user!r} ON {self.server} HAS CHANGED",
            f"  pinned key:     {fingerprint(self.pinned.public_key)}"
            f"  ({self.pinned.how}, {self.pinned.pinned_at})",
            f"  server now has: {fingerprint(self.current)}",
            f"Either {user} registered a new key, or the server is impersonating them.",
            "Messages signed with the new key are shown UNVERIFIED; nothing is "
            "encrypted to it.",
            f"Compare the new fingerprint with {user} (`dk whoami` shows theirs), "
            "then accept it with:",
            f"    {self.trust_command}",
        ]


class KeyChanged(ClientError):
    """Refused: the recipient's key on the server is not the pinned one."""

    exit_code = EXIT_KEY_CHANGED

    def __init__(self, change: KeyChange) -> None:
        super().__init__(
            f"not sent: the key of {change.user_id!r} changed "
            f"(pinned {fingerprint(change.pinned.public_key)}, server now "
            f"{fingerprint(change.current)}); check it, then run: "
            f"{change.trust_command}"
        )
        self.change = change


class KnownKeysError(ClientError):
    """``known_keys.json`` cannot be read: refuse rather than trust anew."""


class KnownKeys:
    """``known_keys.json``: ``{"version": 1, "servers": {URL: {user: pin}}}``.

    Pins are per server (the same user id on two servers is two people).
    The file is read again whenever it changed on disk, so a ``dk trust`` in
    another terminal takes effect in a running ``dk listen``; every change
    re-reads it first and is written atomically with mode 0600.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        #: (inode, mtime, size) of the file as last read; every write renames
        #: a new file into place, so another process's write changes it.
        self._stamp: tuple[int, int, int] | None = None
        self._data: dict[str, dict[str, Pin]] = {}

    def get(self, server: str, user_id: str) -> Pin | None:
        with self._lock:
            return self._load().get(server, {}).get(user_id)

    def pins(self, server: str) -> dict[str, Pin]:
        with self._lock:
            return dict(self._load().get(server, {}))

    def pin(
        self, server: str, user_id: str, public_key: str, how: str = TRUSTED
    ) -> Pin:
        """Pin ``public_key`` for ``user_id`` (replacing any older pin)."""
        entry = Pin(public_key, _now(), how)
        with self._lock:
            data = self._load()
            data.setdefault(server, {})[user_id] = entry
            self._save(data)
        return entry

    def pin_first(self, server: str, user_id: str, public_key: str) -> Pin:
        """The existing pin, or ``public_key`` pinned now (trust on first use)."""
        with self._lock:
            data = self._load()
            existing = data.get(server, {}).get(user_id)
            if existing is not None:
                return existing
            entry = Pin(public_key, _now(), FIRST_USE)
            data.setdefault(server, {})[user_id] = entry
            self._save(data)
        return entry

    def _load(self) -> dict[str, dict[str, Pin]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._data = None, {}
            return self._data
        except OSError as e:
            raise KnownKeysError(f"cannot read {self.path}: {e}") from None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._data = self._parse()
            self._stamp = stamp
        return self._data

    def _parse(self) -> dict[str, dict[str, Pin]]:
        hint = "fix it, or move it away to pin every key anew"
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise KnownKeysError(f"cannot read {self.path}: {e}") from None
        except ValueError as e:
            raise KnownKeysError(
                f"{self.path} is not valid JSON ({e}); {hint}"
            ) from None
        servers = obj.get("servers") if isinstance(obj, dict) else None
        if not isinstance(servers, dict):
            raise KnownKeysError(f'{self.path} has no "servers" object; {hint}')
        data: dict[str, dict[str, Pin]] = {}
        for server, users in servers.items():
            if not isinstance(users, dict):
                raise KnownKeysError(
                    f"{self.path}: {server!r} is not an object; {hint}"
                )
            for user_id, entry in users.items():
                key = entry.get("public_key") if isinstance(entry, dict) else None
                if not isinstance(key, str) or not key:
                    raise KnownKeysError(
                        f"{self.path}: no public_key for {user_id!r}; {hint}"
                    )
                data.setdefault(server, {})[user_id] = Pin(
                    key, str(entry.get("pinned_at", "")), str(entry.get("how", ""))
                )
        return data

    def _save(self, data: dict[str, dict[str, Pin]]) -> None:
        obj = {
            "version": 1,
            "servers": {
                server: {user: pin.to_json() for user, pin in sorted(users.items())}
                for server, users in sorted(data.items())
            },
        }
        write_private(self.path, (json.dumps(obj, indent=2) + "\n").encode())
        st = os.stat(self.path)
        self._stamp, self._data = (st.st_ino, st.st_mtime_ns, st.st_size), data


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
