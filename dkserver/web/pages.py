"""The human-facing pages: landing page, download page, install script and
the client downloads.

Pages are small files read once at startup; ``{base}`` in them becomes the
server's own https origin as the visitor addressed it (Host header, validated
so nothing but a host name and port can reach a page or the shell script).

The client offered at /download/* is built by the server itself when it
starts (:class:`ClientDownload`), so a plain install needs no extra step; an
operator can serve a build of their own instead (``DK_CLIENT_DIR``).
"""

from __future__ import annotations

import os
import re
from importlib import resources
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.static import File

from dkserver import clientbuild
from dkserver.config import Config
from dkserver.web.responses import ApiError, NotFound

HOST_HEADER = re.compile(
    rb"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?$"
)

CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: platform -> (file name offered, content type)
PLATFORMS = {
    "linux": ("dk", "application/octet-stream"),
    "darwin": ("dk", "application/octet-stream"),
    "windows": ("dk.pyz", "application/zip"),
}

ARTIFACT = "dk.pyz"

_STATIC = {
    "dk.css": b"text/css; charset=utf-8",
    "download.js": b"text/javascript; charset=utf-8",
}


def _read(name: str) -> str:
    return resources.files("dkserver.web").joinpath("pages", name).read_text("utf-8")


class ClientDownload(Service):
    """Where ``dk.pyz`` is: built at startup beside the database, or the
    operator's own build in ``DK_CLIENT_DIR``.

    The build runs in the reactor's thread pool (it reads and compresses
    ~1 MB); a download that arrives meanwhile waits for it.  The builder
    keeps an archive whose inputs are unchanged, so a restart is cheap.
    """

    log = Logger()
    name = "client-download"

    def __init__(self, config: Config, reactor: Any) -> None:
        self.operator_dir = config.client_dir or None
        self.build_path = config.client_path
        self.reactor = reactor
        self._built: Deferred | None = None
        self._error: str | None = None

    def startService(self) -> None:
        super().startService()
        if self.operator_dir is not None or self._built is not None:
            return
        self._built = deferToThreadPool(
            self.reactor,
            self.reactor.getThreadPool(),
            clientbuild.build,
            self.build_path,
        )
        self._built.addCallbacks(self._done, self._failed)

    def _done(self, built: clientbuild.Built) -> None:
        self.log.info(
            "dk client {state} at {path}",
            state="built" if built.rebuilt else "unchanged",
            path=built.path,
        )

    def _failed(self, failure) -> None:
        if failure.check(clientbuild.BuildError, OSError):
            self._error = str(failure.value)
            self.log.error(
                "cannot build the dk client for /download: {error}",
                error=self._error,
            )
        else:
            self._error = "unexpected error"
            self.log.failure("cannot build the dk client for /download", failure)

    async def path(self) -> str:
        """The archive to serve; :class:`ApiError` when there is none."""
        if self.operator_dir is not None:
            path = os.path.join(self.operator_dir, ARTIFACT)
            if not os.path.isfile(path):
                raise NotFound(
                    f"No client in {self.operator_dir} (DK_CLIENT_DIR) on this "
                    "server; the operator runs scripts/build-client"
                )
            return path
        if self._built is None:
            raise ApiError(503, "The client is not available yet; retry shortly")
        await self._built
        if self._error is not None or not os.path.isfile(self.build_path):
            raise ApiError(503, "The client could not be built on this server")
        return self.build_path


class Pages:
    def __init__(self, client: ClientDownload) -> None:
        self.client = client
        self._templates = {
            name: _read(name) for name in ("index.html", "download.html", "install.sh")
        }
        self._static = {name: _read(name).encode("utf-8") for name in _STATIC}

    @staticmethod
    def base_url(request: IRequest) -> str:
        m = HOST_HEADER.match(request.getHeader(b"host") or b"")
        if m is None:
            return "https://localhost"
        host = m.group("host").decode("ascii")
        port = m.group("port")
        if port and int(port) != 443:
            return f"https://{host}:{int(port)}"
        return f"https://{host}"

    def render(self, request: IRequest, name: str, content_type: bytes) -> bytes:
        text = self._templates[name].replace("{base}", self.base_url(request))
        request.setHeader(b"Content-Type", content_type)
        if content_type.startswith(b"text/html"):
            request.setHeader(b"Content-Security-Policy", CSP)
        return text.encode("utf-8")

    def static(self, request: IRequest, name: str) -> bytes:
        if name not in _STATIC:
            raise NotFound("Not found")
        request.setHeader(b"Content-Type", _STATIC[name])
        request.setHeader(b"Cache-Control", b"max-age=300")
        return self._static[name]

    async def artifact(self, request: IRequest, platform: str) -> File:
        if platform not in PLATFORMS:
            raise NotFound(
                f"No client for platform {platform!r}; try linux, darwin or windows"
            )
        path = await self.client.path()
        filename, content_type = PLATFORMS[platform]
        request.setHeader(
            b"Content-Disposition", f'attachment; filename="{filename}"'.encode()
        )
        resource = File(path, defaultType=content_type)
        resource.type = content_type
        resource.encoding = None
        return resource
