"""Operator-supplied files: tracker packages and the desktop app's binaries.

Both folders are optional (``DK_TRACKER_DIR``, ``DK_APP_DIR``); anything
absent is a JSON 404, never a 500.  Names that reach the file system are
either fixed here or ``[A-Za-z0-9_-]{1,128}``, so a request cannot name a
path outside the folder.  Symbolic links are followed only when their target
resolves inside the folder (an operator may link a release into place), and
only regular files are served: a link out of the folder, or a directory, is
404 like a missing file.  Files stream through ``twisted.web.static.File``
(Range requests, no whole-file reads into memory).
"""

from __future__ import annotations

import os
import re

from twisted.web.iweb import IRequest
from twisted.web.static import File

from dkserver.web.responses import BadRequest, NotFound

TRACKER_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")

TRACKER_LIST = "tracker_list.json"

#: platform -> the file looked for in DK_APP_DIR, which is also the name the
#: browser saves it as.
APP_FILES = {
    "linux": "DistributedKnowledge-linux.AppImage",
    "darwin": "DistributedKnowledge-darwin.dmg",
    "windows": "DistributedKnowledge-windows.exe",
}


def contained_file(root: str | None, *parts: str) -> str | None:
    """The real path of ``root/parts`` if it is a regular file inside ``root``."""
    if root is None:
        return None
    real_root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, path]) != real_root:
        return None
    if not os.path.isfile(path):
        return None
    return path


def _serve(
    request: IRequest, path: str, content_type: str, download_name: str | None
) -> File:
    if download_name is not None:
        request.setHeader(
            b"Content-Disposition",
            f'attachment; filename="{download_name}"'.encode("ascii"),
        )
    # The resolved path: what was checked is what is served.
    resource = File(path, defaultType=content_type)
    resource.type = content_type
    resource.encoding = None
    return resource


class OperatorFiles:
    def __init__(self, tracker_dir: str | None, app_dir: str | None) -> None:
        self.tracker_dir = tracker_dir
        self.app_dir = app_dir

    def tracker_list(self, request: IRequest) -> File:
        path = contained_file(self.tracker_dir, TRACKER_LIST)
        if path is None:
            raise NotFound("No tracker list on this server")
        return _serve(request, path, "application/json", None)

    def tracker_package(self, request: IRequest, name: str) -> File:
        if not TRACKER_NAME.fullmatch(name):
            raise BadRequest(
                "Tracker name must be 1-128 characters of A-Z, a-z, 0-9, _ and -"
            )
        path = contained_file(self.tracker_dir, f"{name}.zip") or contained_file(
            self.tracker_dir, name, f"{name}.zip"
        )
        if path is None:
            raise NotFound("Tracker package not found")
        return _serve(request, path, "application/zip", f"{name}.zip")

    def app(self, request: IRequest, platform: str) -> File:
        filename = APP_FILES.get(platform)
        if filename is None:
            raise NotFound(
                f"No desktop app for platform {platform[:32]!r}; "
                "try linux, darwin or windows"
            )
        path = contained_file(self.app_dir, filename)
        if path is None:
            raise NotFound(f"The desktop app for {platform} is not available here")
        return _serve(request, path, "application/octet-stream", filename)
