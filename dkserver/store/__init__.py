"""dkserver's storage: one narrow async interface over SQLite.

Handlers call ``await store.messages.pending_direct(user_id)`` and never see
SQL, a cursor or a driver exception (failures are `StoreError`), so another
backend could be added behind the same methods.
"""

from __future__ import annotations

from typing import Any

from twisted.enterprise import adbapi
from twisted.logger import Logger

from dkserver.store.analytics import AnalyticsStore
from dkserver.store.apis import Api, ApiStore, TooManyApis
from dkserver.store.descriptions import DescriptionStore
from dkserver.store.errors import DatabaseUnusable, StoreError, UserExists
from dkserver.store.messages import MessageStore, NewMessage, StoredMessage
from dkserver.store.pool import open_pool
from dkserver.store.schema import LATEST_VERSION, migrate, preflight
from dkserver.store.trackers import Tracker, TrackerInfo, TrackerStore
from dkserver.store.users import User, UserStore

__all__ = [
    "AnalyticsStore",
    "Api",
    "ApiStore",
    "DatabaseUnusable",
    "DescriptionStore",
    "MessageStore",
    "NewMessage",
    "Store",
    "StoreError",
    "StoredMessage",
    "TooManyApis",
    "Tracker",
    "TrackerInfo",
    "TrackerStore",
    "User",
    "UserExists",
    "UserStore",
    "preflight",
]


class Store:
    log = Logger()

    def __init__(self, pool: adbapi.ConnectionPool, path: str = "") -> None:
        self._pool = pool
        self._path = path
        self._closed = False
        self.users = UserStore(pool)
        self.messages = MessageStore(pool)
        self.descriptions = DescriptionStore(pool)
        self.analytics = AnalyticsStore(pool)
        self.trackers = TrackerStore(pool)
        self.apis = ApiStore(pool)

    @property
    def pool(self) -> adbapi.ConnectionPool:
        """For the group writer (dkserver.store.writer), which shares it."""
        return self._pool

    @classmethod
    def create(cls, path: str, reactor: Any, synchronous: str = "NORMAL") -> Store:
        """Build the store without touching the file; call `migrate` before use.

        For services constructed before the reactor runs; `open` does both.
        """
        return cls(open_pool(path, reactor, synchronous), path)

    @classmethod
    async def open(cls, path: str, reactor: Any, synchronous: str = "NORMAL") -> Store:
        """Open the database at ``path`` and bring its schema up to date.

        Raises `StoreError` (`DatabaseUnusable`) if the schema is newer than
        this code knows; the pool is closed again then.
        """
        store = cls.create(path, reactor, synchronous)
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def migrate(self) -> int:
        """Bring the schema to the latest version (on the pool's thread).

        Returns the version found. Running it again is a no-op.
        """
        found = await migrate(self._pool)
        if found != LATEST_VERSION:
            self.log.info(
                "database {path} upgraded from schema {found} to {latest}",
                path=self._path,
                found=found,
                latest=LATEST_VERSION,
            )
        return found

    async def close(self) -> None:
        """Close the pool; call after pending writes have drained.

        This waits for the transaction in flight (if any) to finish. Closing
        twice is harmless.
        """
        if not self._closed:
            self._closed = True
            self._pool.close()
