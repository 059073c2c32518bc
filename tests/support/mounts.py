"""Small real filesystems for the storage-fault tests (a tmpfs, a
loop-mounted ext4 image), mounted for one test.

Mounting needs root with CAP_SYS_ADMIN (and CAP_LINUX_IMMUTABLE for
``chattr``).  Without it a test is skipped with the reason (summed up at the
end of the run, as for PostgreSQL), or fails when ``DK_TEST_REQUIRE_MOUNTS``
is set, as .ci/run sets it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ENV_REQUIRE = "DK_TEST_REQUIRE_MOUNTS"

#: Prefix of the skip reason (tests/conftest.py counts these).
MOUNT_SKIP = "no filesystem could be mounted for the storage-fault tests: "


def run(*argv: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as e:
        raise OSError(f"{argv[0]} not found") from e
    if done.returncode:
        raise OSError(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()}")


def unavailable(reason: str) -> None:
    """Skip (or fail, under DK_TEST_REQUIRE_MOUNTS) for ``reason``."""
    if os.environ.get(ENV_REQUIRE):
        pytest.fail(f"{ENV_REQUIRE} is set and {MOUNT_SKIP}{reason}", pytrace=False)
    pytest.skip(MOUNT_SKIP + reason)


def mounted(directory: Path, *argv: str) -> Path:
    """``mount … directory`` (created), or skip/fail as above."""
    directory.mkdir()
    try:
        if os.geteuid() != 0:
            raise OSError("not running as root")
        run("mount", *argv, str(directory))
    except OSError as e:
        unavailable(str(e))
    return directory


def ext4_image(path: Path, size: int) -> Path:
    """An empty ext4 filesystem image of ``size`` bytes (no reserved blocks)."""
    with open(path, "wb") as f:
        f.truncate(size)
    try:
        run("mkfs.ext4", "-q", "-F", "-m", "0", str(path))
    except OSError as e:
        unavailable(str(e))
    return path


def unmount(directory: Path) -> None:
    """Lazily: a process that still holds a file there keeps it until it exits."""
    subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=60)
