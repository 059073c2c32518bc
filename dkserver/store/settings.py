"""``server_settings``: values every node sharing the database must agree on.

The first node to start writes a value and every other one reads that value
back: ``INSERT … ON CONFLICT DO NOTHING`` then ``SELECT``, in one transaction.
On PostgreSQL a second inserter of the same name waits on the first one's
uncommitted row and then does nothing, so nodes starting at once all end up
with the winner's value, never each their own.
"""

from __future__ import annotations

from dkserver.store.database import Database, Txn


class SettingsStore:
    def __init__(self, pool: Database) -> None:
        self._pool = pool

    async def get_or_create(self, name: str, value: str) -> str:
        """The stored value of ``name``; ``value`` becomes it if there is none."""
        return await self._pool.runInteraction(get_or_create_txn, name, value)

    async def get(self, name: str) -> str | None:
        return await self._pool.runInteraction(_get_txn, name)


def get_or_create_txn(txn: Txn, name: str, value: str) -> str:
    txn.execute(
        "INSERT INTO server_settings (name, value) VALUES (?, ?)"
        " ON CONFLICT DO NOTHING",
        (name, value),
    )
    return _get_txn(txn, name)


def _get_txn(txn: Txn, name: str) -> str | None:
    txn.execute("SELECT value FROM server_settings WHERE name = ?", (name,))
    row = txn.fetchone()
    return None if row is None else row[0]
