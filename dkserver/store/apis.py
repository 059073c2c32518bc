"""Users' APIs, in the original's ``user_apis``: one row per (user, api name).

Written as the original writes them (``documents`` a JSON array text, ``""``
rather than NULL when empty) and read leniently: NULLs, documents text that
is not a JSON array of strings, and the original's timestamps all read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dkserver import timestamps
from dkserver.store.database import Database, Txn
from dkserver.store.errors import IntegrityError, StoreError
from dkserver.store.schema import utc_time_or_null


class TooManyApis(StoreError):
    """A new API would exceed the per-user limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} APIs per user")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Api:
    id: int
    user_id: str
    name: str
    documents: list[str]
    policy: str
    #: RFC 3339, UTC
    created_at: str
    updated_at: str
    #: Set by `ApiStore.everyone` only.
    username: str | None = None


def encode_documents(documents: Sequence[str]) -> str:
    if not documents:
        return ""
    return json.dumps(list(documents), ensure_ascii=False, separators=(",", ":"))


def decode_documents(text: object) -> list[str]:
    if not isinstance(text, str) or not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return []
    return value


class ApiStore:
    def __init__(
        self,
        pool: Database,
        clock_ns: Callable[[], int] = time.time_ns,
        *,
        reads: Database | None = None,
    ) -> None:
        self._pool = pool
        self._reads = pool if reads is None else reads
        self._clock_ns = clock_ns

    async def upsert(
        self,
        user_id: str,
        name: str,
        documents: Sequence[str],
        policy: str,
        max_per_user: int,
    ) -> None:
        """Insert or update the user's API ``name``.

        ``updated_at`` moves only when something changed.  Raises
        `TooManyApis` when the user already has ``max_per_user`` others, and
        `StoreError` for an unknown user.
        """
        now = timestamps.utc_storage_text(self._clock_ns())
        await self._pool.runInteraction(
            _upsert_txn,
            user_id,
            name,
            encode_documents(documents),
            policy,
            now,
            max_per_user,
        )

    async def for_user(self, user_id: str) -> list[Api]:
        """The user's APIs, oldest first."""
        return await self._reads.runInteraction(_for_user_txn, user_id)

    async def everyone(self) -> list[Api]:
        """Every user's APIs with their usernames, newest ``updated_at`` first."""
        return await self._reads.runInteraction(_everyone_txn)


UPSERT = (
    "INSERT INTO user_apis (user_id, api_name, documents, policy, created_at,"
    " updated_at) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(user_id, api_name) DO UPDATE SET"
    " documents = excluded.documents, policy = excluded.policy,"
    " updated_at = excluded.updated_at"
    " WHERE user_apis.documents IS DISTINCT FROM excluded.documents"
    " OR user_apis.policy IS DISTINCT FROM excluded.policy"
)

COUNT_OWN = "SELECT COUNT(*) FROM user_apis WHERE user_id = ?"
EXISTS_ONE = "SELECT 1 FROM user_apis WHERE user_id = ? AND api_name = ?"


def _upsert_txn(
    txn: Txn,
    user_id: str,
    name: str,
    documents: str,
    policy: str,
    now: str,
    max_per_user: int,
) -> None:
    txn.execute(COUNT_OWN, (user_id,))
    (count,) = txn.fetchone()
    if count >= max_per_user:
        txn.execute(EXISTS_ONE, (user_id, name))
        if txn.fetchone() is None:
            raise TooManyApis(max_per_user)
    try:
        policy = txn.engine.store_text(policy)
        txn.execute(UPSERT, (user_id, name, documents, policy, now, now))
    except IntegrityError as e:
        raise StoreError(f"cannot store API of {user_id!r}: {e}") from e


_COLUMNS = (
    "a.id, a.user_id, a.api_name, a.documents, a.policy, a.created_at, a.updated_at"
)


def _api(txn: Txn, row: tuple, username: str | None = None) -> Api:
    row_id, user_id, name, documents, policy, created, updated = row
    policy = txn.engine.read_text(policy)
    return Api(
        row_id,
        user_id,
        name,
        decode_documents(documents),
        policy if isinstance(policy, str) else "",
        timestamps.stored_to_rfc3339(created),
        timestamps.stored_to_rfc3339(updated),
        username,
    )


def _for_user_txn(txn: Txn, user_id: str) -> list[Api]:
    txn.execute(
        f"SELECT {_COLUMNS} FROM user_apis a WHERE a.user_id = ? ORDER BY a.id",
        (user_id,),
    )
    return [_api(txn, row) for row in txn.fetchall()]


#: As for trackers: rows of users that no longer exist are left out.
SELECT_EVERYONE = (
    f"SELECT {_COLUMNS}, u.username FROM user_apis a"
    " JOIN users u ON u.user_id = a.user_id"
    f" ORDER BY {utc_time_or_null('a.updated_at')} DESC, a.id DESC"
)


def _everyone_txn(txn: Txn) -> list[Api]:
    txn.execute(SELECT_EVERYONE)
    return [_api(txn, row[:-1], row[-1]) for row in txn.fetchall()]
