"""The user's identity (Ed25519 key, user id, server) and the files in home.

Home holds ``identity.json`` (the private key seed; mode 0600), ``token``
(the last JWT; mode 0600), ``inbox.jsonl`` (frames received by commands that
do not show messages, kept for the next ``dk listen``) and ``seen.json``
(ids already shown, so a redelivered message is shown once) and
``known_keys.json`` (the peers' pinned keys, :mod:`dkclient.pins`).  Files are
written atomically: a private temporary file in the same directory, fsynced,
then renamed over the old one.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from dkclient.crypto import b64d, b64e

IDENTITY_FILE = "identity.json"
TOKEN_FILE = "token"  # noqa: S105 - a file name
INBOX_FILE = "inbox.jsonl"
SEEN_FILE = "seen.json"
KNOWN_KEYS_FILE = "known_keys.json"
#: How many shown message ids ``seen.json`` remembers.
SEEN_LIMIT = 2048

RESERVED_IDS = frozenset({"system", "broadcast"})


class KeyFileError(Exception):
    """The identity file is missing, unreadable or malformed."""


def default_home() -> Path:
    """``$DK_HOME``, else the platform's per-user config directory + ``dk``."""
    env = os.environ.get("DK_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / "dk"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "dk"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dk"


def validate_user_id(user_id: str) -> str | None:
    """Why ``user_id`` cannot be registered (PROTOCOL.md), or None."""
    if not 1 <= len(user_id) <= 128:
        return "a user id has 1 to 128 characters"
    if user_id in RESERVED_IDS:
        return f"{user_id!r} is reserved"
    if any(c == "/" or c.isspace() or ord(c) < 32 or ord(c) == 127 for c in user_id):
        return "a user id cannot contain '/', whitespace or control characters"
    return None


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, readable by the owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@dataclass
class Identity:
    user_id: str
    signing_key: SigningKey
    username: str = ""
    server: str = ""

    @classmethod
    def generate(cls, user_id: str, username: str = "", server: str = "") -> Identity:
        return cls(user_id, SigningKey.generate(), username or user_id, server)

    @property
    def public_key_b64(self) -> str:
        return b64e(bytes(self.signing_key.verify_key))

    def to_json(self) -> dict:
        return {
            "version": 1,
            "user_id": self.user_id,
            "username": self.username,
            "server": self.server,
            "public_key": self.public_key_b64,
            "ed25519_seed": b64e(bytes(self.signing_key)),
        }

    @classmethod
    def from_json(cls, obj: object) -> Identity:
        if not isinstance(obj, dict):
            raise KeyFileError("identity file is not a JSON object")
        try:
            seed = b64d(obj["ed25519_seed"])
            key = SigningKey(seed)
            user_id = obj["user_id"]
        except (KeyError, TypeError, ValueError) as e:
            raise KeyFileError(f"identity file is malformed: {e}") from None
        if not isinstance(user_id, str) or not user_id:
            raise KeyFileError("identity file has no user_id")
        ident = cls(
            user_id, key, str(obj.get("username") or ""), str(obj.get("server") or "")
        )
        public = obj.get("public_key")
        if public and public != ident.public_key_b64:
            raise KeyFileError("identity file's public_key does not match its seed")
        return ident


class Home:
    """The client's directory: identity, token, inbox of spooled frames,
    seen ids and pinned keys."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_home()

    @property
    def identity_path(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def token_path(self) -> Path:
        return self.path / TOKEN_FILE

    @property
    def inbox_path(self) -> Path:
        return self.path / INBOX_FILE

    @property
    def known_keys_path(self) -> Path:
        return self.path / KNOWN_KEYS_FILE

    # -- identity --

    def has_identity(self) -> bool:
        return self.identity_path.exists()

    def load_identity(self) -> Identity:
        try:
            text = self.identity_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyFileError(f"no identity in {self.path}") from None
        except OSError as e:
            raise KeyFileError(f"cannot read {self.identity_path}: {e}") from None
        try:
            return Identity.from_json(json.loads(text))
        except ValueError as e:
            raise KeyFileError(f"{self.identity_path} is not valid JSON: {e}") from None

    def save_identity(self, identity: Identity) -> None:
        data = json.dumps(identity.to_json(), indent=2) + "\n"
        write_private(self.identity_path, data.encode())

    # -- token --

    def load_token(self) -> str | None:
        try:
            token = self.token_path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return token or None

    def save_token(self, token: str) -> None:
        write_private(self.token_path, token.encode("ascii") + b"\n")

    def forget_token(self) -> None:
        try:
            self.token_path.unlink()
        except FileNotFoundError:
            pass

    # -- inbox: frames received by commands that do not show messages --

    def spool(self, frames: list[dict]) -> None:
        if not frames:
            return
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = "".join(json.dumps(f, separators=(",", ":")) + "\n" for f in frames)
        fd = os.open(self.inbox_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(data)

    def take_spooled(self) -> list[dict]:
        """Remove and return the spooled frames (oldest first)."""
        taking = self.path / f".{INBOX_FILE}.{os.getpid()}"
        try:
            os.replace(self.inbox_path, taking)
        except FileNotFoundError:
            return []
        frames = []
        try:
            with open(taking, encoding="utf-8") as f:
                for line in f:
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(obj, dict):
                        frames.append(obj)
        finally:
            os.unlink(taking)
        return frames

    # -- ids already shown (the server delivers at least once) --

    def load_seen(self, server: str) -> list[int]:
        try:
            obj = json.loads((self.path / SEEN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        if not isinstance(obj, dict) or obj.get("server") != server:
            return []
        return [i for i in obj.get("ids", []) if isinstance(i, int)]

    def save_seen(self, server: str, ids: list[int]) -> None:
        data = json.dumps({"server": server, "ids": ids[-SEEN_LIMIT:]})
        write_private(self.path / SEEN_FILE, data.encode())
