"""Calls to Redis for the shared limits: Lua by hash, a deadline, and a
short circuit breaker so a Redis outage costs one timeout, not one per frame.

Every limit that must hold across nodes is one Lua script (one round trip,
atomic on the server).  Scripts are sent as ``EVALSHA``; after a Redis
restart (or ``SCRIPT FLUSH``) the server answers ``NOSCRIPT`` and the call is
repeated once as ``EVAL``, which loads the script again.

When Redis does not answer within ``timeout``, or the connection is down,
:class:`SharedRedis` raises :class:`SharedStateUnavailable` and refuses
further calls for ``retry_after`` seconds without sending them; the callers
then fall back to this node's own limits (see ``docs/scaling.md``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class SharedStateUnavailable(Exception):
    """Redis did not answer (down, restarting, paused or too slow).

    ``sent``: the command went out and may still run when Redis wakes up.
    """

    def __init__(self, reason: str, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class LuaScript:
    """One script, named for logs, with its SHA1 computed once."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        # SHA1 is how Redis names scripts (EVALSHA), not a security measure.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __repr__(self) -> str:
        return f"<LuaScript {self.name} {self.sha[:8]}>"


def _is_noscript(error: BaseException) -> bool:
    # txredisapi turns the NOSCRIPT reply into ScriptDoesNotExist (a
    # ResponseError); other clients pass the server's text through.
    return type(error).__name__ == "ScriptDoesNotExist" or str(error).startswith(
        "NOSCRIPT"
    )


class SharedRedis:
    """The command connection as the limits use it.

    ``redis`` is duck-typed: ``.evalsha(sha, keys, args)``, ``.eval(source,
    keys, args)`` and ``.execute_command(*words)`` returning Deferreds (a
    txredisapi connection).
    """

    log = Logger()

    def __init__(
        self,
        redis: Any,
        clock: IReactorTime,
        timeout: float = 1.0,
        retry_after: float = 1.0,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.timeout = timeout
        self.retry_after = retry_after
        #: While ``clock.seconds()`` is before this, calls fail without I/O.
        self._down_until = 0.0
        self._down = False
        #: Calls that failed (for metrics and tests).
        self.failures = 0
        self._recovered: list[Callable[[], None]] = []

    def on_recovered(self, hook: Callable[[], None]) -> None:
        """``hook()`` when Redis answers again after failing (it may have
        restarted and lost what it held)."""
        self._recovered.append(hook)

    @property
    def available(self) -> bool:
        return self.clock.seconds() >= self._down_until

    async def run(self, script: LuaScript, keys: list[str], args: list[Any]) -> Any:
        """The script's reply; :class:`SharedStateUnavailable` if none came."""
        self._check_open()
        try:
            try:
                reply = await self._deadline(self.redis.evalsha(script.sha, keys, args))
            except Exception as e:
                if not _is_noscript(e):
                    raise
                self.log.info(
                    "Redis lost script {script}; loading it again", script=script.name
                )
                reply = await self._deadline(self.redis.eval(script.source, keys, args))
        except SharedStateUnavailable:
            raise
        except Exception as e:
            self._failed(e)
        self._succeeded()
        return reply

    async def command(self, *words: Any) -> Any:
        """One plain command (``SET``, ``GETDEL``), same deadline and breaker."""
        self._check_open()
        try:
            reply = await self._deadline(self.redis.execute_command(*words))
        except Exception as e:
            self._failed(e)
        self._succeeded()
        return reply

    def _check_open(self) -> None:
        if self.clock.seconds() < self._down_until:
            raise SharedStateUnavailable(
                "Redis unavailable (retrying shortly)", sent=False
            )

    def _deadline(self, d: Deferred) -> Deferred:
        return d.addTimeout(self.timeout, self.clock)

    def _failed(self, error: BaseException):
        self.failures += 1
        self._down_until = self.clock.seconds() + self.retry_after
        if not self._down:
            self._down = True
            self.log.warn(
                "Redis unavailable ({error}); limits fall back to this node's "
                "own until it answers",
                error=f"{type(error).__name__}: {error}",
            )
        raise SharedStateUnavailable(str(error), sent=True) from error

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            self.log.info("Redis answers again; shared limits restored")
            for hook in self._recovered:
                hook()
