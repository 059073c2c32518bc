"""A new user's path: fetch /install.sh from the server, run it with a fresh
HOME, and use the installed dk against the same server."""

from __future__ import annotations

import json
import os
import sys

import pytest_twisted

from tests.client.dkcli import spawn
from tests.client.test_zipapp import build
from tests.support.server import make_config, start_server, stop_server


@pytest_twisted.ensureDeferred
async def test_install_script_installs_a_working_dk(tmp_path):
    dist = tmp_path / "dist"
    dist.mkdir()
    pyz = await build(tmp_path)
    pyz.rename(dist / "dk.pyz")
    server = await start_server(make_config(tmp_path, client_dir=str(dist)))
    try:
        response = await server.http.get(server.url("/install.sh"))
        assert response.code == 200
        script = tmp_path / "install.sh"
        script.write_bytes(await response.content())

        home = tmp_path / "home"
        home.mkdir()
        venv_bin = os.path.dirname(sys.executable)
        env = {
            "HOME": str(home),
            "PATH": f"{venv_bin}:/usr/bin:/bin",
            "DK_INSECURE": "1",
        }
        result = await spawn(["/bin/sh", str(script)], env=env)
        assert result.code == 0, str(result)
        dk = home / ".local" / "bin" / "dk"
        assert dk.exists() and os.access(dk, os.X_OK)
        assert f'export PATH="{home}/.local/bin' in result.out

        # The installed file runs on its own (no PYTHONPATH, no checkout).
        base = f"https://localhost:{server.https_port}"
        cert = server.config.cert_path
        for user in ("ann", "ben"):
            result = await spawn(
                [
                    str(dk),
                    "--server",
                    base,
                    "--cacert",
                    cert,
                    "--home",
                    str(home / user),
                    "init",
                    user,
                ],
                env=env,
            )
            assert result.code == 0, str(result)
        result = await spawn(
            [
                str(dk),
                "--home",
                str(home / "ann"),
                "--cacert",
                cert,
                "send",
                "ben",
                "installed and working",
            ],
            env=env,
        )
        assert result.code == 0, str(result)
        result = await spawn(
            [
                str(dk),
                "--home",
                str(home / "ben"),
                "--cacert",
                cert,
                "listen",
                "--json",
                "--count",
                "1",
                "--timeout",
                "20",
            ],
            env=env,
        )
        assert result.code == 0, str(result)
        line = json.loads(result.out.strip().splitlines()[-1])
        assert line["content"] == "installed and working"
        assert line["from"] == "ann" and line["verified"] is True
    finally:
        await stop_server(server)
