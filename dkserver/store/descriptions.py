"""Users' profile descriptions: a JSON array of strings, as the original keeps it."""

from __future__ import annotations

import json

from dkserver.store.database import Database, Txn
from dkserver.store.errors import IntegrityError, StoreError


class DescriptionStore:
    def __init__(self, pool: Database, *, reads: Database | None = None) -> None:
        self._pool = pool
        self._reads = pool if reads is None else reads

    async def set(self, user_id: str, descriptions: list[str]) -> None:
        """Replace the user's list; raises `StoreError` for an unknown user."""
        # compact, UTF-8 kept, like Go's json.Marshal
        text = json.dumps(list(descriptions), ensure_ascii=False, separators=(",", ":"))
        await self._pool.runInteraction(_set_txn, user_id, text)

    async def get(self, user_id: str) -> list[str]:
        """The user's list, ``[]`` when none or when a legacy value is unreadable."""
        text = await self._reads.runInteraction(_get_txn, user_id)
        return _decode(text)


def _decode(text: str | None) -> list[str]:
    if text is None:
        return []
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return []
    return value


def _set_txn(txn: Txn, user_id: str, text: str) -> None:
    try:
        txn.execute(
            "INSERT INTO user_descriptions (user_id, descriptions) VALUES (?, ?)"
            " ON CONFLICT(user_id) DO UPDATE SET descriptions = excluded.descriptions",
            (user_id, text),
        )
    except IntegrityError as e:
        raise StoreError(f"cannot set descriptions of {user_id!r}: {e}") from e


def _get_txn(txn: Txn, user_id: str) -> str | None:
    if not txn.engine.can_hold(user_id):
        return None
    txn.execute(
        "SELECT descriptions FROM user_descriptions WHERE user_id = ?", (user_id,)
    )
    row = txn.fetchone()
    return None if row is None else row[0]
