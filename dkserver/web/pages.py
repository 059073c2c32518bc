"""The human-facing pages: landing page, download page, install script and
the client downloads.

Pages are small files read once at startup; ``{base}`` in them becomes the
server's own https origin as the visitor addressed it (Host header, validated
so nothing but a host name and port can reach a page or the shell script).
"""

from __future__ import annotations

import os
import re
from importlib import resources

from twisted.web.iweb import IRequest
from twisted.web.static import File

from dkserver.web.responses import NotFound

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


class Pages:
    def __init__(self, client_dir: str) -> None:
        self.client_dir = client_dir
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

    def artifact(self, request: IRequest, platform: str) -> File:
        if platform not in PLATFORMS:
            raise NotFound(
                f"No client for platform {platform!r}; try linux, darwin or windows"
            )
        path = os.path.join(self.client_dir, ARTIFACT)
        if not os.path.isfile(path):
            raise NotFound(
                "No client has been built on this server yet "
                "(the operator runs scripts/build-client)"
            )
        filename, content_type = PLATFORMS[platform]
        request.setHeader(
            b"Content-Disposition", f'attachment; filename="{filename}"'.encode()
        )
        resource = File(path, defaultType=content_type)
        resource.type = content_type
        resource.encoding = None
        return resource
