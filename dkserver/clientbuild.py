"""Build ``dk.pyz``, the single-file ``dk`` client (a Python zipapp).

There is one way to build it: ``scripts/build-client`` runs this module, and
the server runs :func:`build` at startup so that a plain install serves
``/download/*`` with no extra step.

The archive holds the installed ``dkclient`` package, a copy of the installed
``websockets`` (pure Python: its C speedups are left out and websockets falls
back to Python) and a ``__main__`` that checks the runtime requirement.  Both
packages are located with :func:`importlib.util.find_spec`, never imported:
the server does not import the client.  The archive is reproducible (sorted
names, fixed timestamps) and carries the digest of its inputs as its zip
comment, so a restart with unchanged packages reuses the file.

Only the standard library is used, and nothing here touches the reactor; the
server calls :func:`build` in a thread.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

#: The packages the client needs that are pure Python and so travel inside.
PACKAGES = ("dkclient", "websockets")
SHEBANG = b"#!/usr/bin/env python3\n"
#: Compiled code and C sources stay out: the archive runs on any platform.
_LEFT_OUT_SUFFIXES = (".so", ".pyd", ".c", ".pyc", ".pyo")
_LEFT_OUT_NAMES = frozenset({"speedups.pyi"})
#: Fixed in every entry, so equal inputs give a byte-identical archive.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_COMMENT_PREFIX = b"dk.pyz inputs sha256="

MAIN = '''\
"""dk.pyz: the dkserver command-line client (websockets {ws_version} vendored)."""

import sys

if sys.version_info < (3, 11):
    sys.stderr.write(
        "dk: error: Python 3.11 or newer is required (this is %s)\\n"
        % sys.version.split()[0]
    )
    sys.exit(7)

from dkclient.cli import main

sys.exit(main())
'''


class BuildError(Exception):
    """The client cannot be built here; the message is one line."""


@dataclass(frozen=True)
class Built:
    path: str
    digest: str
    #: False when an existing archive with the same inputs was kept.
    rebuilt: bool
    websockets_version: str


def _package_dir(name: str) -> Path:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"the {name} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _files(name: str) -> list[tuple[str, Path]]:
    root = _package_dir(name)
    found = []
    for directory, subdirs, filenames in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for filename in filenames:
            if filename.endswith(_LEFT_OUT_SUFFIXES) or filename in _LEFT_OUT_NAMES:
                continue
            path = Path(directory, filename)
            found.append((f"{name}/{path.relative_to(root).as_posix()}", path))
    return found


def _websockets_license() -> Path | None:
    try:
        dist = importlib.metadata.distribution("websockets")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name.upper().startswith("LICENSE"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    return None


def _websockets_version() -> str:
    try:
        return importlib.metadata.version("websockets")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _inputs() -> tuple[dict[str, bytes], str]:
    """Every archive member's name and bytes, and the websockets version."""
    members: dict[str, bytes] = {}
    for name in PACKAGES:
        for arcname, path in _files(name):
            members[arcname] = path.read_bytes()
    license_path = _websockets_license()
    if license_path is not None:
        members["websockets/LICENSE"] = license_path.read_bytes()
    ws_version = _websockets_version()
    members["__main__.py"] = MAIN.format(ws_version=ws_version).encode("utf-8")
    return members, ws_version


def _digest(members: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for arcname in sorted(members):
        data = members[arcname]
        h.update(b"%d:%s%d:" % (len(arcname), arcname.encode("utf-8"), len(data)))
        h.update(data)
    return h.hexdigest()


def existing_digest(path: str) -> str | None:
    """The inputs digest recorded in an archive built here, or None."""
    try:
        with zipfile.ZipFile(path) as z:
            comment = z.comment
    except (OSError, zipfile.BadZipFile):
        return None
    if not comment.startswith(_COMMENT_PREFIX):
        return None
    return comment[len(_COMMENT_PREFIX) :].decode("ascii", "replace")


def build(output: str) -> Built:
    """Write the client to ``output`` unless an archive of the same inputs is there.

    The new file replaces the old one atomically, so a download running
    meanwhile gets the old or the new archive, never half of one.
    """
    members, ws_version = _inputs()
    digest = _digest(members)
    if existing_digest(output) == digest:
        return Built(output, digest, False, ws_version)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dk.pyz.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(SHEBANG)
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                for arcname in sorted(members):
                    info = zipfile.ZipInfo(arcname, _ZIP_TIME)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    z.writestr(info, members[arcname])
                z.comment = _COMMENT_PREFIX + digest.encode("ascii")
        # An executable (#! line) that the operator may run or serve.
        os.chmod(tmp, 0o755)  # noqa: S103
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Built(output, digest, True, ws_version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="build-client",
        description="Build dk.pyz, the dk client as one file (a Python zipapp), "
        "from the installed dkclient and websockets packages.",
    )
    parser.add_argument(
        "-o", "--output", default=os.path.join("dist", "dk.pyz"), help="%(default)s"
    )
    args = parser.parse_args(argv)
    try:
        built = build(args.output)
    except (BuildError, OSError) as e:
        sys.stderr.write(f"build-client: {e}\n")
        return 1
    size = os.path.getsize(built.path)
    state = "built" if built.rebuilt else "unchanged"
    print(
        f"{state} {built.path} ({size} bytes; "
        f"websockets {built.websockets_version} vendored)"
    )
    print("runtime requirement: python3 >= 3.11 with pynacl and cryptography")
    print("  (python3 -m pip install --user pynacl cryptography)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
