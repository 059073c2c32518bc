"""Accounts that can be revoked: user status, token cut-offs, invite codes.

Every change here also writes a fresh random value to the
``accounts_version`` row of ``server_settings`` in the same transaction.
Each server polls that one row (dkserver.auth.revocation) and reloads the
few revoked users when it changes, so a ban or a ``token revoke`` that the
admin CLI commits from another process reaches every node sharing the
database within one poll, while a token check stays a dictionary lookup.
A random value rather than a counter: two writers incrementing at once
could both write the same number, and a poller that saw the first would
miss the second.

Deletion keeps a tombstone: the row stays with status ``deleted``, so the
id can never be registered again (another person taking over an id that
contacts know would receive what was meant for the old owner, and the
messages the old owner sent keep their sender).  What only served the user
goes: descriptions, trackers, APIs and direct messages still pending for
them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from dkserver.store.database import Database, Txn
from dkserver.store.errors import StoreError

ACTIVE = "active"
BANNED = "banned"
DELETED = "deleted"
STATUSES = (ACTIVE, BANNED, DELETED)

#: ``server_settings`` rows the servers poll.
ACCOUNTS_VERSION = "accounts_version"
SECRET_VERSION = "secret_version"  # noqa: S105 (a row name)


class UnknownUser(StoreError):
    """The command named a user id nobody registered."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"no user {user_id!r}")
        self.user_id = user_id


class InviteRefused(StoreError):
    """Registration named no usable invite code (unknown, used up, expired
    or revoked: the caller is not told which)."""


@dataclass(frozen=True, slots=True)
class Revoked:
    """A user whose tokens are not all good: not active, or cut off."""

    user_id: str
    status: str
    #: Tokens issued (``iat``) before this Unix-ms instant are refused.
    tokens_valid_after_ms: int | None


@dataclass(frozen=True, slots=True)
class Invite:
    code_id: str
    uses_left: int
    expires_ms: int | None
    created_ms: int
    revoked: bool


def hash_code(code: str) -> str:
    """Invite codes are kept hashed: reading the table does not give
    anyone a code to register with."""
    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()


#: ``invite list`` names a code by the start of its hash.
CODE_ID_LENGTH = 12


def new_invite_code() -> str:
    """A random code that never begins with ``-``: an operator passes it to
    ``dkserver invite revoke CODE``, where a leading dash reads as an option
    (1 code in 64 did).  Dropping those draws costs under 0.03 of 144 bits."""
    while True:
        code = secrets.token_urlsafe(18)
        if not code.startswith("-"):
            return code


# -- what changes trigger ----------------------------------------------------


def bump_txn(txn: Txn, name: str) -> str:
    """Write a fresh random value to ``name``; pollers notice the change."""
    value = secrets.token_hex(8)
    txn.execute(
        "INSERT INTO server_settings (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )
    return value


def versions_txn(txn: Txn) -> tuple[str | None, str | None]:
    """The two polled values, in one cheap primary-key read."""
    txn.execute(
        "SELECT name, value FROM server_settings WHERE name IN (?, ?)",
        (ACCOUNTS_VERSION, SECRET_VERSION),
    )
    found = dict(txn.fetchall())
    return found.get(ACCOUNTS_VERSION), found.get(SECRET_VERSION)


def revoked_txn(txn: Txn) -> list[Revoked]:
    """Every user the token check must know about (a partial index)."""
    txn.execute(
        "SELECT user_id, status, tokens_valid_after_ms FROM users"
        " WHERE status <> 'active' OR tokens_valid_after_ms IS NOT NULL"
    )
    return [Revoked(*row) for row in txn.fetchall()]


def status_txn(txn: Txn, user_id: str) -> str:
    if not txn.engine.can_hold(user_id):
        raise UnknownUser(user_id)
    txn.execute("SELECT status FROM users WHERE user_id = ?", (user_id,))
    row = txn.fetchone()
    if row is None:
        raise UnknownUser(user_id)
    return row[0]


# -- the admin commands ------------------------------------------------------


def ban_txn(txn: Txn, user_id: str, now_ms: int) -> str:
    """Ban ``user_id``; returns the status before.  Also cuts off every
    token issued so far, so an unban does not bring old tokens back."""
    before = status_txn(txn, user_id)
    if before == DELETED:
        return before
    txn.execute(
        "UPDATE users SET status = ?, tokens_valid_after_ms = ? WHERE user_id = ?",
        (BANNED, now_ms, user_id),
    )
    bump_txn(txn, ACCOUNTS_VERSION)
    return before


def unban_txn(txn: Txn, user_id: str) -> str:
    """Make a banned user active again; returns the status before (a
    deleted user stays deleted)."""
    before = status_txn(txn, user_id)
    if before == BANNED:
        txn.execute("UPDATE users SET status = ? WHERE user_id = ?", (ACTIVE, user_id))
        bump_txn(txn, ACCOUNTS_VERSION)
    return before


def delete_txn(txn: Txn, user_id: str, now_ms: int) -> dict[str, int]:
    """Delete ``user_id`` (a tombstone, see the module); returns how many
    rows of each kind went."""
    status_txn(txn, user_id)
    txn.execute(
        "UPDATE users SET status = ?, tokens_valid_after_ms = ? WHERE user_id = ?",
        (DELETED, now_ms, user_id),
    )
    removed = {}
    for table in ("user_descriptions", "user_trackers", "user_apis"):
        txn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
        removed[table] = max(txn.rowcount, 0)
    txn.execute(
        "DELETE FROM messages WHERE to_user = ? AND status = 'pending'"
        " AND is_broadcast = 0",
        (user_id,),
    )
    removed["pending_messages"] = max(txn.rowcount, 0)
    bump_txn(txn, ACCOUNTS_VERSION)
    return removed


def revoke_tokens_txn(txn: Txn, user_id: str, now_ms: int) -> None:
    """Every token of ``user_id`` issued before ``now_ms`` stops working."""
    status_txn(txn, user_id)
    txn.execute(
        "UPDATE users SET tokens_valid_after_ms = ? WHERE user_id = ?",
        (now_ms, user_id),
    )
    bump_txn(txn, ACCOUNTS_VERSION)


def rotate_key_txn(txn: Txn, user_id: str, public_key: str, now_ms: int) -> None:
    """Replace the user's key and cut off their tokens: a key is rotated
    because the old one may be known to someone else, who may hold tokens.
    Refused (`UnknownUser`) for an id that is not an active user."""
    if status_txn(txn, user_id) != ACTIVE:
        raise UnknownUser(user_id)
    txn.execute(
        "UPDATE users SET public_key = ?, tokens_valid_after_ms = ? WHERE user_id = ?",
        (public_key, now_ms, user_id),
    )
    bump_txn(txn, ACCOUNTS_VERSION)


# -- invites -----------------------------------------------------------------


def create_invite_txn(
    txn: Txn, code: str, uses: int, expires_ms: int | None, now_ms: int
) -> str:
    """Store ``code`` (hashed); returns its id for ``invite list``."""
    code_hash = hash_code(code)
    txn.execute(
        "INSERT INTO invites (code_hash, uses_left, expires_ms, created_ms)"
        " VALUES (?, ?, ?, ?)",
        (code_hash, uses, expires_ms, now_ms),
    )
    return code_hash[:CODE_ID_LENGTH]


def list_invites_txn(txn: Txn) -> list[Invite]:
    txn.execute(
        "SELECT code_hash, uses_left, expires_ms, created_ms, revoked"
        " FROM invites ORDER BY created_ms, code_hash"
    )
    return [
        Invite(h[:CODE_ID_LENGTH], uses, expires, created, bool(revoked))
        for h, uses, expires, created, revoked in txn.fetchall()
    ]


def revoke_invite_txn(txn: Txn, code_or_id: str) -> bool:
    """Revoke an invite named by its code or its id; False if none matches."""
    txn.execute(
        "UPDATE invites SET revoked = 1 WHERE code_hash = ?",
        (hash_code(code_or_id),),
    )
    if txn.rowcount > 0:
        return True
    if len(code_or_id) == CODE_ID_LENGTH and all(
        c in "0123456789abcdef" for c in code_or_id
    ):
        txn.execute(
            "SELECT code_hash FROM invites WHERE code_hash >= ? ORDER BY code_hash"
            " LIMIT 2",
            (code_or_id,),
        )
        matches = [h for (h,) in txn.fetchall() if h.startswith(code_or_id)]
        if len(matches) == 1:
            txn.execute(
                "UPDATE invites SET revoked = 1 WHERE code_hash = ?", (matches[0],)
            )
            return True
    return False


def consume_invite_txn(txn: Txn, code: str, now_ms: int) -> None:
    """Use up one use of ``code`` or raise `InviteRefused`; in the
    registration's own transaction, so a refused registration keeps it."""
    txn.execute(
        "UPDATE invites SET uses_left = uses_left - 1"
        " WHERE code_hash = ? AND uses_left > 0 AND revoked = 0"
        " AND (expires_ms IS NULL OR expires_ms > ?)",
        (hash_code(code), now_ms),
    )
    if txn.rowcount != 1:
        raise InviteRefused("invite code is not valid")


# -- the async interface the server uses ---------------------------------------


class AccountStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def versions(self) -> tuple[str | None, str | None]:
        return await self._pool.runInteraction(versions_txn)

    async def revoked(self) -> list[Revoked]:
        return await self._pool.runInteraction(revoked_txn)

    async def rotate_key(self, user_id: str, public_key: str, now_ms: int) -> None:
        await self._pool.runInteraction(rotate_key_txn, user_id, public_key, now_ms)

    async def bump_secret_version(self) -> None:
        await self._pool.runInteraction(bump_txn, SECRET_VERSION)
