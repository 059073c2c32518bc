"""A service that listens on an endpoint and remembers the port it got.

Like twisted.application.internet.StreamServerEndpointService (binding in
``privilegedStartService`` so privileged ports work before a privilege drop),
but it exposes the bound port, which tests on ephemeral ports and the
redirect site need.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure


class ListeningService(Service):
    log = Logger()

    def __init__(self, name: str, endpoint, factory: IProtocolFactory) -> None:
        self.setName(name)
        self._endpoint = endpoint
        self._factory = factory
        self.port: IListeningPort | None = None
        self._listening: Deferred | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening is not None:
            return
        self._listening = self._endpoint.listen(self._factory)

        def bound(port: IListeningPort) -> IListeningPort:
            self.port = port
            host = port.getHost()
            self.log.info(
                "{name} listening on {address}", name=self.name, address=str(host)
            )
            return port

        def failed(failure):
            self.log.failure("{name} could not listen", failure, name=self.name)
            return failure

        self._listening.addCallbacks(bound, failed)

    def when_listening(self) -> Deferred:
        """Fires with the listening port (or fails if binding failed)."""
        if self._listening is None:
            self._listen()
        d: Deferred = Deferred()

        def fire(result):
            if isinstance(result, Failure):
                d.errback(result)
                return None  # logged by _listen; the waiter handles it
            d.callback(result)
            return result

        self._listening.addBoth(fire)
        return d

    def bound_port(self) -> int | None:
        if self.port is None:
            return None
        return getattr(self.port.getHost(), "port", None)

    def stopService(self) -> Deferred:
        super().stopService()
        if self.port is None:
            if self._listening is not None:
                self._listening.cancel()
            return succeed(None)
        port, self.port = self.port, None
        return port.stopListening()
