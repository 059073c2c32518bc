"""The wheel installs the ordinary way and runs from anywhere.

The wheel is built from a copy of this checkout and installed (with its
dependencies, by pip as configured on the machine) into a fresh virtualenv
outside the checkout; every server here is started from a directory that is
not the checkout, with no PYTHONPATH, so nothing can come from the source
tree.  Building and installing take a while, so it is done once per session;
the dependencies' wheels are kept in a wheelhouse outside the checkout
(``DK_TEST_WHEELHOUSE``, default ``~/.cache/dkserver-tests/wheelhouse``), so
only the first run downloads them.

These tests drive only subprocesses (no server in this process), so they use
blocking calls and the standard library's HTTPS client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import dkserver

REPO = Path(__file__).resolve().parents[2]
#: Wheels of the dependencies, kept between runs so that only the first run
#: downloads them (the fresh virtualenv installs from here, offline).
WHEELHOUSE = Path(
    os.environ.get("DK_TEST_WHEELHOUSE")
    or Path.home() / ".cache" / "dkserver-tests" / "wheelhouse"
)
#: Never copied into the build: local state and build output of a checkout.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    "*.db",
    "*.db-*",
    "*.jwt-secret",
    "*.pem",
    "*.key",
    "*.pyz",
    "dropin.cache",
)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that points back at the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
        and not k.startswith("DK_")
        and k
        not in (
            "SERVER_ADDR",
            "HTTP_ADDR",
            "JWT_SECRET",
            "MESSAGE_RATE_LIMIT",
            "MESSAGE_BURST_LIMIT",
        )
    }
    env.update(extra)
    return env


def run(argv: list[str], cwd: Path, timeout: float = 600, **kw):
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=kw.pop("env", clean_env()),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )
    return result


def show(result) -> str:
    return (
        f"{result.args}\nexit {result.returncode}\n--- stdout\n"
        f"{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SOURCE, symlinks=True)
    wheelhouse = base / "wheelhouse"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheelhouse), "."],
        cwd=source,
    )
    assert built.returncode == 0, show(built)
    [wheel] = wheelhouse.glob("dkserver-*.whl")

    venv = base / "venv"
    created = run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    assert created.returncode == 0, show(created)
    install = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--find-links",
        str(WHEELHOUSE),
        str(wheel),
    ]
    pip = run(install, cwd=base)
    if pip.returncode != 0:
        # First run, or the requirements changed: fetch the dependencies as
        # pip is configured to (the package index), then install offline.
        fetched = run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-d",
                str(WHEELHOUSE),
                str(wheel),
            ],
            cwd=base,
        )
        assert fetched.returncode == 0, show(fetched)
        for stale in WHEELHOUSE.glob("dkserver-*.whl"):
            stale.unlink()  # only the dependencies are kept
        pip = run(install, cwd=base)
    assert pip.returncode == 0, show(pip)
    return Installed(wheel, venv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process of the installed package, in its own directory."""

    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        port: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.cwd = cwd
        self.port = port
        self.cert = cwd / "certs" / "server.pem"
        self.log = open(cwd / "server.log", "w+")
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env or clean_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._context: ssl.SSLContext | None = None

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.cwd / "server.log").read_text(errors="replace")

    def wait_up(self, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            if self.cert.exists():
                try:
                    self.get("/active-users")
                    return
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.2)
        raise AssertionError(f"server did not come up:\n{self.output()}")

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        if self._context is None:
            self._context = ssl.create_default_context(cafile=str(self.cert))
        url = f"https://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, context=self._context, timeout=20) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def terminate(self, limit: float = 30.0) -> int:
        """SIGTERM; the exit status.  twistd stops cleanly and then ends by
        the same signal (so a supervisor sees it), hence -SIGTERM."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(limit)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.log.close()


def start(cwd: Path, command: list[str], port: int | None = None, env=None) -> Server:
    """Start ``command`` in ``cwd`` and wait until it answers over HTTPS."""
    if port is None:
        port = free_port()
        command = [*command, "--https", f"127.0.0.1:{port}", "--http", "none"]
    server = Server(command, cwd, port, env)
    try:
        server.wait_up()
    except BaseException:
        server.process.kill()
        server.process.wait()
        raise
    return server


# -- the wheel itself -----------------------------------------------------------


def test_wheel_ships_plugin_pages_tac_and_license_but_no_twisted_init(installed):
    with zipfile.ZipFile(installed.wheel) as z:
        names = set(z.namelist())
        dist_info = f"dkserver-{dkserver.__version__}.dist-info"
        metadata = z.read(f"{dist_info}/METADATA").decode()
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert "twisted/plugins/dkserver_plugin.py" in names
    # Either would replace Twisted's own package on install.
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.startswith("twisted/") and "dkserver" not in n]
    for page in ("index.html", "download.html", "install.sh", "dk.css"):
        assert f"dkserver/web/pages/{page}" in names
    assert "dkserver/tac/dkserver.tac" in names
    # The shared limits' Lua scripts (read at import by dkserver.cluster.limits).
    for script in ("bucket_take", "conn_reserve", "conn_release", "conn_resync"):
        assert f"dkserver/cluster/{script}.lua" in names
    assert "dkserver/clientbuild.py" in names and "dkclient/cli.py" in names
    assert f"{dist_info}/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith("tests/")]
    assert f"Version: {dkserver.__version__}\n" in metadata
    assert "License-File: LICENSE" in metadata
    assert "dkserver = dkserver.cli:main" in entry_points
    assert "dk = dkclient.cli:main" in entry_points


def test_installed_package_is_imported_from_the_venv_not_the_checkout(
    installed, tmp_path
):
    result = run(
        [
            installed.bin("python"),
            "-c",
            "import dkserver, dkclient, twisted.plugins.dkserver_plugin as p; "
            "print(dkserver.__file__); print(dkclient.__file__); print(p.__file__)",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, show(result)
    for path in result.stdout.split():
        assert Path(path).is_relative_to(installed.venv), result.stdout
        assert not Path(path).is_relative_to(REPO)


# -- commands of the installed package ------------------------------------------


def test_installed_commands_report_the_version_and_help(installed, tmp_path):
    version = run([installed.bin("dkserver"), "--version"], cwd=tmp_path)
    assert version.returncode == 0, show(version)
    assert version.stdout.strip() == f"dkserver {dkserver.__version__}"

    twistd = run([installed.bin("twistd"), "dkserver", "--version"], cwd=tmp_path)
    assert twistd.returncode == 0, show(twistd)
    assert twistd.stdout.splitlines()[0] == f"dkserver {dkserver.__version__}"

    help_ = run([installed.bin("dkserver"), "--help"], cwd=tmp_path)
    assert help_.returncode == 0 and "checkconfig" in help_.stdout, show(help_)

    dk = run([installed.bin("dk"), "--help"], cwd=tmp_path)
    assert dk.returncode == 0 and "usage: dk" in dk.stdout, show(dk)

    bad = run([installed.bin("dkserver"), "checkconfig", "--https", "x"], cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, show(bad)
    assert list(tmp_path.iterdir()) == []


# -- the installed server -------------------------------------------------------


def test_installed_twistd_serves_https_and_its_own_client_then_stops_on_sigterm(
    installed, tmp_path
):
    state = tmp_path / "state"
    state.mkdir()
    server = start(state, [installed.bin("twistd"), "-n", "--pidfile=", "dkserver"])
    try:
        code, headers, body = server.get("/active-users")
        assert code == 200 and body == b'{"online":[],"offline":[]}', body

        code, headers, page = server.get("/download")
        assert code == 200 and b"install.sh" in page
        assert headers["Content-Type"].startswith("text/html")

        code, headers, script = server.get("/install.sh")
        assert code == 200 and f"127.0.0.1:{server.port}".encode() in script

        # Served with no build step, built from the installed packages.
        code, headers, pyz = server.get("/download/linux")
        assert code == 200, pyz
        assert headers["Content-Disposition"] == 'attachment; filename="dk"'
        assert pyz.startswith(b"#!/usr/bin/env python3\n")
        assert (state / "dk.pyz").read_bytes() == pyz
    finally:
        code = server.terminate()
    output = server.output()
    assert code == -signal.SIGTERM, output
    assert "shutdown complete" in output
    assert "Traceback" not in output

    # The downloaded client runs on its own.
    client = tmp_path / "dk.pyz"
    client.write_bytes(pyz)
    result = run([installed.bin("python"), str(client), "--help"], cwd=tmp_path)
    assert result.returncode == 0 and "usage: dk" in result.stdout, show(result)
    with zipfile.ZipFile(client) as z:
        names = z.namelist()
    assert "dkclient/cli.py" in names and "websockets/asyncio/client.py" in names
    assert not [n for n in names if n.startswith("dkserver/")]

    # State went where the server was started: beside its database.
    assert {p.name for p in state.iterdir()} >= {
        "dkserver.db",
        "dkserver.db.jwt-secret",
        "certs",
        "dk.pyz",
    }


def test_dkserver_serve_runs_the_server_and_restarts_with_the_cached_client(
    installed, tmp_path
):
    mtimes = []
    for _ in range(2):
        server = start(tmp_path, [installed.bin("dkserver"), "serve"])
        try:
            code, _, pyz = server.get("/download/windows")
            assert code == 200 and pyz.startswith(b"#!")
            mtimes.append((tmp_path / "dk.pyz").stat().st_mtime_ns)
        finally:
            code = server.terminate()
        assert code == -signal.SIGTERM, server.output()
    # Unchanged inputs: the second start kept the archive it had built.
    assert mtimes[0] == mtimes[1]
    assert "dk client unchanged" in server.output()


def test_installed_tac_file_builds_the_same_service(installed, tmp_path):
    tac = run([installed.bin("dkserver"), "tac-path"], cwd=tmp_path)
    assert tac.returncode == 0, show(tac)
    tac_path = Path(tac.stdout.strip())
    assert tac_path.is_relative_to(installed.venv) and tac_path.is_file()
    # The .tac takes its settings from the environment.
    port = free_port()
    server = start(
        tmp_path,
        [installed.bin("twistd"), "-n", "--pidfile=", "-y", str(tac_path)],
        port=port,
        env=clean_env(SERVER_ADDR=f"127.0.0.1:{port}", HTTP_ADDR="none"),
    )
    try:
        code, _, body = server.get("/active-users")
        assert code == 200, body
    finally:
        code = server.terminate()
    assert code == -signal.SIGTERM, server.output()
