"""sd_notify(3) for ``Type=notify`` units: READY, WATCHDOG, STOPPING, STATUS.

A datagram sender of its own rather than a dependency: the protocol is one
``sendto`` of ``KEY=value`` lines to the unix socket named by
``NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket), and a sender
here logs a failed send once instead of swallowing it.  Without
``NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``) everything is
a no-op.

:class:`SystemdNotify` sends ``READY=1`` once the service is listening and
:class:`~dkserver.health.Readiness` passes, then every ``WatchdogSec/2``
(``WATCHDOG_USEC``) runs the readiness check on the reactor and sends
``WATCHDOG=1`` only when it passes: a wedged reactor or a database that
keeps failing for longer than ``WatchdogSec`` gets the process restarted.
``STATUS=`` says what it is doing, and ``STOPPING=1`` starts the shutdown.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from dkserver.health import Readiness

#: How often startup asks again whether it is ready (seconds).
READY_RETRY = 1.0


class Notifier:
    """Sends sd_notify datagrams; a no-op without an address."""

    log = Logger()

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """``send(READY=1, STATUS="...")``; True if the datagram went out."""
        if self.address is None:
            return False
        text = "\n".join(
            f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()
        )
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.setblocking(False)
            self._socket.sendto(text.encode("utf-8"), target)
        except OSError as e:
            if not self._warned:
                self._warned = True
                self.log.warn(
                    "sd_notify to {address} failed: {error}",
                    address=self.address,
                    error=str(e),
                )
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, or None when there is no
    watchdog for this process (unset, invalid, or another ``WATCHDOG_PID``)."""
    owner = environ.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class SystemdNotify(Service):
    """Tells systemd about readiness and liveness (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        notifier: Notifier,
        readiness: Readiness,
        started: Callable[[], Awaitable[None]],
        clock: Any,
        *,
        watchdog: float | None,
        description: str = "",
    ) -> None:
        self.setName("systemd")
        self.notifier = notifier
        self._readiness = readiness
        self._started = started
        self._clock = clock
        self.watchdog = watchdog
        self.description = description
        self.ready_sent = False
        self._ready_now = False
        self._loop: LoopingCall | None = None
        self._starting: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        if not self.notifier.enabled:
            return
        self.notifier.send(STATUS="starting")
        self._starting = Deferred.fromCoroutine(self._announce())
        self._starting.addErrback(self._start_failed)

    def _start_failed(self, failure) -> None:
        if not failure.check(CancelledError):  # stopped before it was ready
            self.log.failure("sd_notify READY failed", failure)

    async def _announce(self) -> None:
        await self._started()
        while self.running:
            verdict = await self._readiness.check()
            if verdict.ready:
                break
            self.notifier.send(STATUS=f"starting; not ready: {verdict.describe()}")
            await deferLater(self._clock, READY_RETRY)
        if not self.running:
            return
        self.ready_sent = True
        self._ready_now = True
        self.notifier.send(READY=1, STATUS=self._serving())
        if self.watchdog is not None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self.watchdog, now=True).addErrback(
                lambda f: self.log.failure("systemd watchdog loop stopped", f)
            )

    def _serving(self) -> str:
        return f"serving {self.description}".strip()

    def _tick(self) -> Deferred:
        d = Deferred.fromCoroutine(self._check_and_pet())
        # Never let the LoopingCall stop: a failure is logged, the next tick runs.
        d.addErrback(lambda f: self.log.failure("systemd watchdog check failed", f))
        return d

    async def _check_and_pet(self) -> None:
        verdict = await self._readiness.check()
        if not self.running:
            return
        if verdict.ready:
            if not self._ready_now:
                self.notifier.send(STATUS=self._serving())
            self._ready_now = True
            self.notifier.send(WATCHDOG=1)
        else:
            self._ready_now = False
            self.notifier.send(STATUS=f"not ready: {verdict.describe()}")

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        self.notifier.send(STOPPING=1, STATUS="shutting down")

    def stopped(self) -> None:
        """The shutdown finished: the last status line."""
        self.notifier.send(STATUS="stopped")
        self.notifier.close()
