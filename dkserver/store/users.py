"""Registered users."""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger

from dkserver.store.accounts import consume_invite_txn
from dkserver.store.database import Database, Txn
from dkserver.store.errors import IntegrityError, StoreError, UserExists


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    username: str
    public_key: str
    #: Registration instant (Unix ns); broadcasts older than this are not
    #: offered to the user. Legacy rows have second precision.
    registered_ns: int
    #: ``active``, ``banned`` or ``deleted`` (dkserver.store.accounts).
    status: str = "active"


#: Users kept in memory; a login or token check for them needs no query.
CACHE_SIZE = 50_000


class UserStore:
    """The cache saves the trip to the database thread on every login,
    token check and key lookup.  A user changes only by an account change
    (ban, delete, key rotation: dkserver.store.accounts), which every
    server learns of by its revocation poll and then calls `forget`.

    A read that began before a `forget` may have read the account as it was
    before the change, so its result is not kept (the generation count).
    `warm` fills the cache at start in one read, so that a restarted
    server's reconnect storm does not read every user on its own trip to
    the database thread."""

    log = Logger()

    def __init__(
        self,
        pool: Database,
        clock_ns: Callable[[], int] = time.time_ns,
        *,
        reads: Database | None = None,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._pool = pool
        #: Lookups and the user list: the read pool (see dkserver.store.pool).
        self._reads = pool if reads is None else reads
        self._clock_ns = clock_ns
        self._cache: OrderedDict[str, User] = OrderedDict()
        self._cache_size = cache_size
        #: Bumped by `forget`: what a read begun before it returns is stale.
        self._generation = 0
        self._registered: list[Callable[[str], None]] = []

    def on_registered(self, callback: Callable[[str], None]) -> None:
        """``callback(user_id)`` after each registration through this store
        commits (the user list of /active-users keeps itself current)."""
        self._registered.append(callback)

    def _remember(self, user: User) -> None:
        self._cache[user.user_id] = user
        self._cache.move_to_end(user.user_id)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def create(
        self,
        user_id: str,
        username: str,
        public_key: str,
        registered_ns: int | None = None,
        *,
        invite: str | None = None,
    ) -> None:
        """Register a user; raises `UserExists` if the id is taken.

        With ``invite``, one use of that code is taken in the same
        transaction (`InviteRefused` if it is not usable).
        ``registered_ns`` defaults to now; tests pass it to pin the instant.
        """
        ns = self._clock_ns() if registered_ns is None else registered_ns
        await self._pool.runInteraction(
            _create_txn, user_id, username, public_key, ns, invite
        )
        for callback in self._registered:
            try:
                callback(user_id)
            except Exception:  # the user is registered: never fail that
                self.log.failure("after registering {user_id}", user_id=user_id)

    def forget(self) -> None:
        """Drop every cached user: an account changed somewhere."""
        self._cache.clear()
        self._generation += 1

    async def warm(self) -> int | None:
        """Read up to the cache's size of users into it, in one query; how
        many were added.  Users a login cached meanwhile stay as they are
        (as fresh, and more recently used); None, and nothing kept, if an
        account changed during the read."""
        generation = self._generation
        users = await self._reads.runInteraction(_warm_txn, self._cache_size)
        if generation != self._generation:
            return None
        cache, added = self._cache, 0
        for user in users:
            if len(cache) >= self._cache_size:
                break
            if user.user_id not in cache:
                cache[user.user_id] = user
                cache.move_to_end(user.user_id, last=False)
                added += 1
        return added

    async def get(self, user_id: str) -> User | None:
        user = self._cache.get(user_id)
        if user is not None:
            self._cache.move_to_end(user_id)
            return user
        generation = self._generation
        user = await self._reads.runInteraction(_get_txn, user_id)
        if user is not None and generation == self._generation:
            self._remember(user)
        return user

    async def exists(self, user_id: str) -> bool:
        if user_id in self._cache:
            return True
        return await self.get(user_id) is not None

    async def all_ids(self) -> list[str]:
        return await self._reads.runInteraction(_all_ids_txn)

    async def all_ids_encoded(self) -> tuple[list[str], list[bytes]]:
        """Every user id in order, and each as its JSON string (encoded on
        the read pool's thread, not the reactor's)."""
        return await self._reads.runInteraction(_all_ids_encoded_txn)

    async def page(self, after: str | None, limit: int) -> list[User]:
        """Up to ``limit`` users in user id order, after ``after`` (the last
        id of the previous page; None: from the start): ``dkserver user
        list``, which must not hold a lock for the whole table."""
        return await self._pool.runInteraction(_page_txn, after, limit)

    async def activity(self, user_id: str) -> UserActivity:
        """What ``dkserver user show`` adds to a user's record."""
        return await self._pool.runInteraction(_activity_txn, user_id)


@dataclass(frozen=True, slots=True)
class UserActivity:
    #: Direct messages stored for the user and not yet delivered.
    pending_direct: int
    #: WebSocket sessions recorded, and how many are open now.
    sessions: int
    open_sessions: int
    #: Start of the user's latest session as stored (None: never connected);
    #: the latest as text, which is the latest instant for what dkserver
    #: writes (UTC), not necessarily for the original server's offsets.
    last_session_start: str | None


def _create_txn(
    txn: Txn,
    user_id: str,
    username: str,
    public_key: str,
    ns: int,
    invite: str | None = None,
) -> None:
    if _exists_txn(txn, user_id):
        raise UserExists(user_id)
    if invite is not None:
        consume_invite_txn(txn, invite, ns // 1_000_000)
    # created_at as SQLite's CURRENT_TIMESTAMP writes it, like the original
    created_at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 1_000_000_000))
    try:
        txn.execute(
            "INSERT INTO users (user_id, username, public_key, created_at,"
            " registered_ns) VALUES (?, ?, ?, ?, ?)",
            (user_id, username, public_key, created_at, ns),
        )
    except IntegrityError as e:
        raise StoreError(f"cannot register user: {e}") from e


#: A `User`'s fields, in order.
_USER_COLUMNS = "user_id, username, public_key, COALESCE(registered_ns, 0), status"


def _get_txn(txn: Txn, user_id: str) -> User | None:
    if not txn.engine.can_hold(user_id):
        return None  # such a user cannot have registered (PostgreSQL: a NUL)
    txn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,))
    row = txn.fetchone()
    return None if row is None else User(*row)


def _warm_txn(txn: Txn, limit: int) -> list[User]:
    txn.execute(f"SELECT {_USER_COLUMNS} FROM users LIMIT ?", (limit,))
    # One string object per account state, not one per cached user.
    return [
        User(uid, name, key, ns, sys.intern(status))
        for uid, name, key, ns, status in txn.fetchall()
    ]


def _exists_txn(txn: Txn, user_id: str) -> bool:
    txn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,))
    return txn.fetchone() is not None


def _all_ids_txn(txn: Txn) -> list[str]:
    txn.execute("SELECT user_id FROM users ORDER BY user_id")
    return [user_id for (user_id,) in txn.fetchall()]


def _page_txn(txn: Txn, after: str | None, limit: int) -> list[User]:
    columns = "SELECT user_id, username, public_key, COALESCE(registered_ns, 0)"
    if after is None:
        txn.execute(f"{columns} FROM users ORDER BY user_id LIMIT ?", (limit,))
    else:
        txn.execute(
            f"{columns} FROM users WHERE user_id > ? ORDER BY user_id LIMIT ?",
            (after, limit),
        )
    return [User(*row) for row in txn.fetchall()]


def _activity_txn(txn: Txn, user_id: str) -> UserActivity:
    txn.execute(
        "SELECT COUNT(*) FROM messages WHERE to_user = ? AND status = 'pending'"
        " AND is_broadcast = 0",
        (user_id,),
    )
    (pending,) = txn.fetchone()
    txn.execute(
        "SELECT COUNT(*),"
        " CAST(COALESCE(SUM(CASE WHEN end_time IS NULL THEN 1 END), 0) AS BIGINT),"
        " MAX(start_time) FROM sessions WHERE user_id = ?",
        (user_id,),
    )
    sessions, still_open, last_start = txn.fetchone()
    return UserActivity(pending, sessions, still_open, last_start)


def _all_ids_encoded_txn(txn: Txn) -> tuple[list[str], list[bytes]]:
    ids = _all_ids_txn(txn)
    # Python's order: PostgreSQL's collation may sort differently, and the
    # user list bisects.
    ids.sort()
    return ids, [encode_user_id(user_id) for user_id in ids]


def encode_user_id(user_id: str) -> bytes:
    """``user_id`` as a JSON string, in a bytes object of its own size.

    Not orjson: each ``orjson.dumps`` result keeps a buffer of about 4 KiB
    behind it, which for 100,000 kept ids measured 400 MB of RSS.
    """
    return json.dumps(user_id, ensure_ascii=False).encode()
