"""The plain-HTTP site: every request is redirected to HTTPS with 308."""

from __future__ import annotations

import re
from collections.abc import Callable

from twisted.web import resource
from twisted.web.iweb import IRequest

from dkserver.web.responses import error_body

_HOST = re.compile(rb"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


class RedirectResource(resource.Resource):
    """308 to ``https://<host>[:<https port>]<path and query>``.

    The HTTPS port is read at request time so an ephemeral port (tests) or a
    port bound later still appears correctly; it is left out when it is 443.
    """

    isLeaf = True

    def __init__(self, https_port: Callable[[], int | None]) -> None:
        super().__init__()
        self._https_port = https_port

    def render(self, request: IRequest) -> bytes:
        m = _HOST.match(request.getHeader(b"host") or b"")
        if m is None:
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", b"application/json")
            return error_body("A valid Host header is required")
        target = b"https://" + m.group("host")
        port = self._https_port()
        if port and port != 443:
            target += b":%d" % port
        target += request.uri if request.uri.startswith(b"/") else b"/"
        request.setResponseCode(308)
        request.setHeader(b"Location", target)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"Permanent Redirect: " + target + b"\n"
