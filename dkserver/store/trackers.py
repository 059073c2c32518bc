"""Users' trackers (the desktop app's list), in the original's ``user_trackers``.

The desktop app posts its whole list every 10 s while a tracker runs, almost
always unchanged, so :meth:`TrackerStore.replace` reads only the caller's rows
(through the ``(user_id, tracker_name)`` unique index), writes nothing when
nothing changed, and otherwise upserts the changed names and deletes the
unlisted ones by key.

Columns are written as the original writes them (``""``, never NULL, for an
empty description, version or document set: its Go code cannot scan a NULL
into a string), and read leniently: NULLs, documents text that is not the
expected JSON and naive or offset timestamps from the original all read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dkserver import timestamps
from dkserver.store.database import Database, Txn
from dkserver.store.errors import IntegrityError, StoreError
from dkserver.store.schema import utc_time_or_null


@dataclass(frozen=True, slots=True)
class TrackerInfo:
    """One tracker as a client posts it."""

    description: str = ""
    version: str = ""
    datasets: Mapping[str, str] = field(default_factory=dict)
    templates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Tracker:
    id: int
    user_id: str
    name: str
    info: TrackerInfo
    #: RFC 3339, UTC
    created_at: str
    updated_at: str
    #: Set by `TrackerStore.everyone` only.
    username: str | None = None


def encode_documents(info: TrackerInfo) -> str:
    """The ``tracker_documents`` text: ``""`` when empty, as the original writes.

    Keys sorted, as Go marshals maps; only non-empty maps are written.
    """
    documents = {}
    if info.datasets:
        documents["datasets"] = dict(info.datasets)
    if info.templates:
        documents["templates"] = dict(info.templates)
    if not documents:
        return ""
    return json.dumps(
        documents, ensure_ascii=False, separators=(",", ":"), sort_keys=True
    )


def _string_map(value: object) -> dict[str, str]:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return value
    return {}


def decode_documents(text: object) -> tuple[dict[str, str], dict[str, str]]:
    """``(datasets, templates)`` of a stored value; anything unreadable is empty."""
    if not isinstance(text, str) or not text:
        return {}, {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}, {}
    if not isinstance(value, dict):
        return {}, {}
    return _string_map(value.get("datasets")), _string_map(value.get("templates"))


def _info(
    txn: Txn, description: object, version: object, documents: object
) -> TrackerInfo:
    datasets, templates = decode_documents(documents)
    description = txn.engine.read_text(description)
    version = txn.engine.read_text(version)
    return TrackerInfo(
        description if isinstance(description, str) else "",
        version if isinstance(version, str) else "",
        datasets,
        templates,
    )


def _same(stored: TrackerInfo, wanted: TrackerInfo) -> bool:
    return (
        stored.description == wanted.description
        and stored.version == wanted.version
        and dict(stored.datasets) == dict(wanted.datasets)
        and dict(stored.templates) == dict(wanted.templates)
    )


class TrackerStore:
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

    async def replace(self, user_id: str, trackers: Mapping[str, TrackerInfo]) -> bool:
        """Make ``trackers`` the user's whole list; ``False`` if it already was.

        Unchanged trackers keep their ``updated_at`` (and every tracker its
        id); raises `StoreError` for an unknown user.
        """
        now = timestamps.utc_storage_text(self._clock_ns())
        return await self._pool.runInteraction(
            _replace_txn, user_id, dict(trackers), now
        )

    async def for_user(self, user_id: str) -> list[Tracker]:
        """The user's trackers, oldest first."""
        return await self._reads.runInteraction(_for_user_txn, user_id)

    async def everyone(self) -> list[Tracker]:
        """Every user's trackers with their usernames, newest ``updated_at`` first."""
        return await self._reads.runInteraction(_everyone_txn)


_UPSERT = (
    "INSERT INTO user_trackers (user_id, tracker_name, tracker_description,"
    " tracker_version, tracker_documents, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(user_id, tracker_name) DO UPDATE SET"
    " tracker_description = excluded.tracker_description,"
    " tracker_version = excluded.tracker_version,"
    " tracker_documents = excluded.tracker_documents,"
    " updated_at = excluded.updated_at"
)

#: The caller's rows only, through the (user_id, tracker_name) index.
SELECT_OWN = (
    "SELECT tracker_name, tracker_description, tracker_version, tracker_documents"
    " FROM user_trackers WHERE user_id = ?"
)

DELETE_ONE = "DELETE FROM user_trackers WHERE user_id = ? AND tracker_name = ?"


def _replace_txn(
    txn: Txn,
    user_id: str,
    trackers: dict[str, TrackerInfo],
    now: str,
) -> bool:
    txn.execute(SELECT_OWN, (user_id,))
    stored = {name: _info(txn, d, v, docs) for name, d, v, docs in txn.fetchall()}
    text = txn.engine.store_text
    changed = [
        (
            user_id,
            name,
            text(info.description),
            text(info.version),
            encode_documents(info),
            now,
        )
        for name, info in trackers.items()
        if name not in stored or not _same(stored[name], info)
    ]
    unlisted = [(user_id, name) for name in stored if name not in trackers]
    if not changed and not unlisted:
        return False
    try:
        txn.executemany(DELETE_ONE, unlisted)
        txn.executemany(_UPSERT, [(*row, now) for row in changed])
    except IntegrityError as e:
        raise StoreError(f"cannot store trackers of {user_id!r}: {e}") from e
    return True


_COLUMNS = (
    "t.id, t.user_id, t.tracker_name, t.tracker_description, t.tracker_version,"
    " t.tracker_documents, t.created_at, t.updated_at"
)


def _tracker(txn: Txn, row: tuple, username: str | None = None) -> Tracker:
    row_id, user_id, name, description, version, documents, created, updated = row
    return Tracker(
        row_id,
        user_id,
        name,
        _info(txn, description, version, documents),
        timestamps.stored_to_rfc3339(created),
        timestamps.stored_to_rfc3339(updated),
        username,
    )


def _for_user_txn(txn: Txn, user_id: str) -> list[Tracker]:
    txn.execute(
        f"SELECT {_COLUMNS} FROM user_trackers t WHERE t.user_id = ? ORDER BY t.id",
        (user_id,),
    )
    return [_tracker(txn, row) for row in txn.fetchall()]


#: Rows of users that no longer exist (the original never enforced the
#: foreign key) are left out, as the original's JOIN leaves them out.
SELECT_EVERYONE = (
    f"SELECT {_COLUMNS}, u.username FROM user_trackers t"
    " JOIN users u ON u.user_id = t.user_id"
    f" ORDER BY {utc_time_or_null('t.updated_at')} DESC, t.id DESC"
)


def _everyone_txn(txn: Txn) -> list[Tracker]:
    txn.execute(SELECT_EVERYONE)
    return [_tracker(txn, row[:-1], row[-1]) for row in txn.fetchall()]
