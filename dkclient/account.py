"""The client as a user sees it: an identity in a home, logged in on demand.

:class:`Client` ties the key file, the token file and the REST API together,
builds signed (and, for direct messages, encrypted) frames, and opens
received frames into :class:`Message` objects: signature checked against the
sender's pinned public key and content decrypted.  Peers' keys are pinned on
first use (:mod:`dkclient.pins`): the key the server gives later is only
compared with the pin, never used in its place.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dkclient import crypto
from dkclient.api import Api, ApiError, ClientError
from dkclient.exits import EXIT_AUTH, EXIT_NOT_INITIALISED, EXIT_UNKNOWN_USER
from dkclient.keys import Home, Identity, KeyFileError
from dkclient.pins import KeyChange, KeyChanged, KnownKeys, KnownKeysError, Pin

DEFAULT_SERVER = "https://localhost:8443"
#: A stored token this close to its expiry is replaced before use.
TOKEN_MARGIN = 60


class NotInitialised(ClientError):
    """No identity in home: run ``dk init`` first."""

    exit_code = EXIT_NOT_INITIALISED


class AuthError(ClientError):
    """Login failed (unknown user, wrong key, rate limited)."""

    exit_code = EXIT_AUTH


class UnknownUser(ClientError):
    """The server has no such user."""

    exit_code = EXIT_UNKNOWN_USER


@dataclass
class Message:
    """A received frame, verified and (for direct messages) decrypted.

    ``kind`` is ``direct``, ``broadcast``, ``forward`` (a forward request from
    the server) or ``system`` (a server error frame).  ``content`` is the
    plaintext, or None when an envelope could not be opened (see ``error``).
    """

    kind: str
    id: int | None
    sender: str
    to: str
    timestamp: str
    content: str | None
    verified: bool
    encrypted: bool = False
    status: str = ""
    error: str | None = None
    #: Set when the server's key for the sender is no longer the pinned one.
    key_change: KeyChange | None = None
    frame: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "from": self.sender,
            "to": self.to,
            "timestamp": self.timestamp,
            "content": self.content,
            "verified": self.verified,
            "encrypted": self.encrypted,
            "broadcast": self.kind == "broadcast",
            "kind": self.kind,
        }
        if self.error:
            obj["error"] = self.error
        if self.key_change is not None:
            obj["key_changed"] = True
        return obj


def token_claims(token: str) -> dict:
    """The JWT's claims, unverified (only to see expiry and user)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


class Client:
    """A user's client for one server.

    ``server`` defaults to the one recorded in the identity at ``dk init``,
    then ``https://localhost:8443``.
    """

    def __init__(
        self,
        home: Home | str | os.PathLike | None = None,
        server: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        identity: Identity | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.home = home if isinstance(home, Home) else Home(home)
        self._identity = identity
        self._server = server
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._api: Api | None = None
        self._token: str | None = None
        #: Keys as the server gave them during this client's life (not pins).
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()
        self.known_keys = KnownKeys(self.home.known_keys_path)

    # -- identity and server --

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            if not self.home.has_identity():
                raise NotInitialised(
                    f"not initialised: no identity in {self.home.path} "
                    "(run: dk init USER_ID)"
                )
            try:
                self._identity = self.home.load_identity()
            except KeyFileError as e:
                raise NotInitialised(str(e)) from None
        return self._identity

    def use_identity(self, identity: Identity) -> None:
        """Switch to ``identity`` (e.g. one just created); forgets the token."""
        self._identity = identity
        self._token = None

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def server(self) -> str:
        if self._server:
            return self._server
        ident = self._identity
        if ident is None and self.home.has_identity():
            try:
                ident = self.identity
            except NotInitialised:
                ident = None
        return (ident.server if ident and ident.server else "") or DEFAULT_SERVER

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.server, self.ssl_context, self.timeout)
        return self._api

    # -- registration and login --

    def register(self) -> None:
        ident = self.identity
        self.api.register(
            ident.user_id, ident.username or ident.user_id, ident.public_key_b64
        )

    def login(self) -> str:
        """Log in now (challenge, signature), store and return the token."""
        ident = self.identity
        try:
            challenge = self.api.challenge(ident.user_id)
            signature = crypto.sign_challenge(ident.signing_key, challenge)
            token = self.api.verify(ident.user_id, signature)
        except ApiError as e:
            if e.status == 401:
                raise AuthError(
                    f"login as {ident.user_id!r} refused by {self.server}: the user "
                    "is not registered there or this key is not theirs "
                    "(dk init registers it)"
                ) from None
            if e.status == 429:
                raise AuthError(
                    f"login rate limited by {self.server}; retry later"
                ) from None
            raise
        self._token = token
        self.home.save_token(token)
        return token

    def token(self) -> str:
        """A token believed valid: the stored one, or a fresh login."""
        with self._lock:
            token = self._token or self.home.load_token()
            if token and self._token_usable(token):
                self._token = token
                return token
            return self.login()

    def _token_usable(self, token: str) -> bool:
        claims = token_claims(token)
        exp = claims.get("exp")
        if claims.get("user_id") != self.user_id:
            return False
        return isinstance(exp, (int, float)) and exp > time.time() + TOKEN_MARGIN

    def invalidate_token(self) -> None:
        self._token = None
        self.home.forget_token()

    def authed(self, call):
        """``call(token)``; on 401 log in again and retry once."""
        try:
            return call(self.token())
        except ApiError as e:
            if e.status != 401:
                raise
        self.invalidate_token()
        return call(self.token())

    # -- other users --

    def public_key(self, user_id: str, refresh: bool = False) -> str:
        """A user's Ed25519 public key (base64) as the server gives it now,
        cached per client.  Not to be trusted: see :meth:`trusted_key`."""
        if not refresh and user_id in self._keys:
            return self._keys[user_id]
        try:
            record = self.api.get_user(user_id)
        except ApiError as e:
            if e.status == 404:
                raise UnknownUser(f"no user {user_id!r} on {self.server}") from None
            raise
        self._keys[user_id] = record["public_key"]
        return record["public_key"]

    @property
    def pin_scope(self) -> str:
        """Pins are per server: its normalized URL."""
        return self.api.server

    def pinned(self, user_id: str) -> Pin | None:
        return self.known_keys.get(self.pin_scope, user_id)

    def trusted_key(self, user_id: str) -> str:
        """The key to verify ``user_id``'s signatures with: ours for us, else
        the pinned one, pinning what the server gives if there is none yet."""
        if user_id == self.user_id:
            return self.identity.public_key_b64
        pin = self.pinned(user_id)
        if pin is None:
            pin = self.known_keys.pin_first(
                self.pin_scope, user_id, self.public_key(user_id)
            )
        return pin.public_key

    def recipient_key(self, user_id: str) -> str:
        """The key to encrypt to ``user_id``: the pinned one, provided the
        server still gives that key.  Raises :class:`KeyChanged` otherwise:
        a changed key means a message the recipient cannot read or one the
        server can, and only the user can tell which (``dk trust``)."""
        if user_id == self.user_id:
            return self.identity.public_key_b64
        current = self.public_key(user_id)
        pin = self.known_keys.pin_first(self.pin_scope, user_id, current)
        if pin.public_key != current:
            raise KeyChanged(KeyChange(user_id, self.pin_scope, pin, current))
        return pin.public_key

    def trust(self, user_id: str, public_key: str) -> Pin:
        """Pin ``public_key`` for ``user_id`` deliberately (``dk trust``)."""
        crypto.x25519_public_from(crypto.b64d(public_key))  # a usable key
        return self.known_keys.pin(self.pin_scope, user_id, public_key)

    def active_users(self) -> dict[str, list[str]]:
        return self.api.active_users()

    def descriptions(self, user_id: str | None = None) -> list[str]:
        return self.api.get_descriptions(user_id or self.user_id)

    def set_descriptions(self, descriptions: list[str]) -> None:
        self.authed(lambda token: self.api.set_descriptions(token, descriptions))

    def ask_forward(self, query: str) -> str:
        return self.authed(lambda token: self.api.ask_forward(token, query))

    # -- frames out --

    def _signed(self, to: str, content: str, **extra: Any) -> dict[str, Any]:
        ident = self.identity
        text, nanos = crypto.now_timestamp()
        frame: dict[str, Any] = {
            "from": ident.user_id,
            "to": to,
            "timestamp": text,
            "content": content,
            "status": "pending",
            **extra,
        }
        frame["signature"] = crypto.sign_message(
            ident.signing_key, ident.user_id, to, nanos, content
        )
        return frame

    def direct_frame(self, to: str, text: str) -> dict[str, Any]:
        """A signed message to ``to`` whose content is the encrypted envelope."""
        return self._signed(to, crypto.encrypt(self.recipient_key(to), text))

    def broadcast_frame(self, text: str) -> dict[str, Any]:
        """A signed broadcast (broadcasts are not encrypted)."""
        return self._signed("broadcast", text, is_broadcast=True)

    def forward_answer_frame(self, answer: str) -> dict[str, Any]:
        """The answer to a forward request (two-level JSON, not signed)."""
        inner = json.dumps({"type": "forward_response", "message": answer})
        return {
            "from": self.user_id,
            "to": self.user_id,
            "timestamp": crypto.now_timestamp()[0],
            "content": json.dumps({"type": "forward_response", "message": inner}),
            "status": "pending",
            "is_forward_message": True,
        }

    def document_answer_frame(self, kind: str, message: str) -> dict[str, Any]:
        """The answer to a register/append-document request: the inner JSON
        is ``{"type": kind, "message": ...}`` (``register_document_success``
        or ``register_document_error``)."""
        frame = self.forward_answer_frame("")
        inner = json.dumps({"type": kind, "message": message})
        frame["content"] = json.dumps({"type": "forward_response", "message": inner})
        return frame

    # -- frames in --

    def open_frame(self, frame: dict) -> Message:
        """Verify and decrypt a received message object (may call REST)."""
        sender = str(frame.get("from", ""))
        to = str(frame.get("to", ""))
        content = frame.get("content")
        content = content if isinstance(content, str) else ""
        msg_id = frame.get("id") if isinstance(frame.get("id"), int) else None
        base = {
            "id": msg_id,
            "sender": sender,
            "to": to,
            "timestamp": str(frame.get("timestamp", "")),
            "status": str(frame.get("status", "")),
            "frame": frame,
        }
        if sender == "system":
            return Message("system", content=content, verified=False, **base)
        if frame.get("is_forward_message") and sender == to == self.user_id:
            query = forward_query(content)
            return Message("forward", content=query, verified=False, **base)
        is_broadcast = bool(frame.get("is_broadcast")) or to == "broadcast"
        verified, error, change = self._verify(frame, sender)
        msg = Message(
            "broadcast" if is_broadcast else "direct",
            content=content,
            verified=verified,
            error=error,
            key_change=change,
            **base,
        )
        if not is_broadcast and to == self.user_id:
            if crypto.parse_envelope(content) is not None:
                msg.encrypted = True
                try:
                    msg.content = crypto.decrypt(self.identity.signing_key, content)
                except crypto.CryptoError as e:
                    msg.content = None
                    msg.error = f"cannot decrypt: {e}"
        return msg

    def _verify(
        self, frame: dict, sender: str
    ) -> tuple[bool, str | None, KeyChange | None]:
        if not frame.get("signature"):
            return False, "message is not signed", None
        try:
            key = self.trusted_key(sender)
        except UnknownUser:
            return False, f"sender {sender!r} is unknown to the server", None
        except KnownKeysError:
            raise  # not a reason to show the message as merely unverified
        except ClientError as e:
            return False, f"cannot fetch sender key: {e}", None
        if crypto.verify_frame(frame, key):
            return True, None, None
        if sender == self.user_id:
            return False, "signature does not verify", None
        # Tell a forgery from a key the server now gives instead of the pin.
        try:
            current = self.public_key(sender, refresh=True)
        except ClientError:
            current = key
        if current == key:
            return False, "signature does not verify", None
        pin = self.pinned(sender) or Pin(key, "", "")
        change = KeyChange(sender, self.pin_scope, pin, current)
        if crypto.verify_frame(frame, current):
            problem = "signed with a new key, not the pinned one"
        else:
            problem = "signature does not verify; the server's key changed too"
        return False, f"{problem} (run: {change.trust_command})", change


def forward_query(content: str) -> str:
    """The query text inside a forward request's two-level JSON content."""
    try:
        outer = json.loads(content)
    except ValueError:
        return content
    if not isinstance(outer, dict):
        return content
    inner = outer.get("message", outer.get("query"))
    if not isinstance(inner, str):
        return "" if inner is None else json.dumps(inner)
    try:
        nested = json.loads(inner)
    except ValueError:
        return inner
    if isinstance(nested, dict):
        value = nested.get("message", nested.get("query"))
        if isinstance(value, str):
            return value
    return inner


def document_request_type(content: str) -> str | None:
    """``register_document`` or ``append_document`` when a forward request's
    content carries a document (POST /register-document/, /append-document/)."""
    try:
        outer = json.loads(content)
        inner = json.loads(outer["message"]) if isinstance(outer, dict) else None
    except (ValueError, KeyError, TypeError):
        return None
    if isinstance(inner, dict) and inner.get("type") in (
        "register_document",
        "append_document",
    ):
        return inner["type"]
    return None
