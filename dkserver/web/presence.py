"""``GET /active-users`` from memory.

Every registered user, online or offline: with 100,000 users that is a
query returning every row and a 2 MB JSON body, which the original builds
anew for each request.  Here:

* **online** comes from the bus (dkserver.ws.sessions: this process's
  connections, and in a cluster every node's, mirrored from Redis), so it
  is exact at every request;
* **the user list** is kept in memory, in order, each id already encoded as
  JSON.  It is loaded once (on the read pool), a registration through this
  process inserts its user at once (`UserStore.on_registered`), and a copy
  older than `USER_LIST_MAX_AGE` is reloaded in the background while
  requests keep being answered from the old one: users registered through
  another process (another node, ``dkserver port-db``) appear within that
  bound.  A user who is online is listed online whether or not the copy
  knows them yet;
* **the body** is kept until the user list or the online set changes (the
  bus's ``presence_version``), so a loop of requests costs one dictionary
  lookup each, and a change costs one join over the encoded ids in C.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import chain
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from dkserver.store.users import encode_user_id

#: Seconds before the in-memory user list is read again from the database
#: (in the background, on the next request).
USER_LIST_MAX_AGE = 10.0


class ActiveUsers:
    log = Logger()

    def __init__(
        self, users: Any, bus: Any, clock: Any, max_age: float = USER_LIST_MAX_AGE
    ) -> None:
        self._users = users
        self._bus = bus
        self._clock = clock
        self.max_age = max_age
        #: Every user id in order, and each as JSON; None until first loaded.
        self._ids: list[str] | None = None
        self._encoded: list[bytes] = []
        self._loaded_at = 0.0
        #: Grows with every change of ``_ids``.
        self._version = 0
        self._loading = False
        self._waiting: list[Deferred] = []
        #: Registrations while a load runs: its snapshot may predate them.
        self._registered_meanwhile: list[str] = []
        self._body: bytes | None = None
        self._body_key: tuple[int, int] | None = None
        #: Reloads from the database, bodies built (for tests and metrics).
        self.loads = 0
        self.renders = 0
        users.on_registered(self.registered)

    def registered(self, user_id: str) -> None:
        """A user registered through this process (after the commit)."""
        if self._loading:
            self._registered_meanwhile.append(user_id)
        self._insert(user_id)

    def _insert(self, user_id: str) -> None:
        ids = self._ids
        if ids is None:
            return
        i = bisect_left(ids, user_id)
        if i < len(ids) and ids[i] == user_id:
            return
        ids.insert(i, user_id)
        self._encoded.insert(i, encode_user_id(user_id))
        self._version += 1

    async def body(self) -> bytes:
        """The JSON body: ``{"online": [...], "offline": [...]}``, each in
        user-id order."""
        if self._ids is None:
            await self._wait_loaded()
        elif self._clock.seconds() - self._loaded_at >= self.max_age:
            self._start_load()
        presence = getattr(self._bus, "presence_version", None)
        key = None if presence is None else (self._version, presence)
        if key is None or key != self._body_key or self._body is None:
            self._body = self._render()
            self._body_key = key
        return self._body

    # -- loading ---------------------------------------------------------------

    def _wait_loaded(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiting.append(d)
        self._start_load()
        return d

    def _start_load(self) -> None:
        if self._loading:
            return
        self._loading = True
        self._registered_meanwhile = []
        d = ensureDeferred(self._users.all_ids_encoded())
        d.addCallbacks(self._loaded, self._load_failed)
        d.addErrback(lambda f: self.log.failure("loading the user list", f))

    def _loaded(self, result: tuple[list[str], list[bytes]]) -> None:
        ids, encoded = result
        self._loading = False
        self._loaded_at = self._clock.seconds()
        self.loads += 1
        if ids != self._ids:
            self._ids, self._encoded = ids, encoded
            self._version += 1
        for user_id in self._registered_meanwhile:
            self._insert(user_id)
        self._registered_meanwhile = []
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _load_failed(self, failure) -> None:
        self._loading = False
        self._registered_meanwhile = []
        waiting, self._waiting = self._waiting, []
        if not waiting:
            # A background reload: keep answering from the copy we have,
            # and try again on the next request after max_age.
            self._loaded_at = self._clock.seconds()
            self.log.warn(
                "reloading the user list failed ({error}); serving the copy "
                "loaded before",
                error=failure.getErrorMessage(),
            )
            return
        for d in waiting:
            d.errback(failure)

    # -- rendering -------------------------------------------------------------

    def _render(self) -> bytes:
        self.renders += 1
        ids, encoded = self._ids or [], self._encoded
        online = sorted(self._bus.online_users())
        # Offline: the encoded list without the online users' positions,
        # joined from slices (C loops, not one Python step per user).
        parts, start = [], 0
        for user_id in online:
            i = bisect_left(ids, user_id, start)
            if i < len(ids) and ids[i] == user_id:
                parts.append(encoded[start:i])
                start = i + 1
        parts.append(encoded[start:])
        return b"".join(
            (
                b'{"online":[',
                b",".join(encode_user_id(user_id) for user_id in online),
                b'],"offline":[',
                b",".join(chain.from_iterable(parts)),
                b"]}",
            )
        )
