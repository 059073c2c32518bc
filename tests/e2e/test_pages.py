"""Landing page, download page (platform detection in headless Chromium),
install script and client downloads."""

from __future__ import annotations

import os
import shutil
import zipfile

import pytest
import pytest_twisted
from twisted.internet import utils

from tests.support.client import get
from tests.support.server import make_config, start_server, stop_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest_twisted.ensureDeferred
async def test_landing_page_explains_and_links_download(server):
    response = await server.http.get(server.url("/"))
    body = (await response.content()).decode()
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/html")
    assert (
        b"script-src 'self'"
        in response.headers.getRawHeaders(b"content-security-policy")[0]
    )
    assert "DistributedKnowledge" in body and 'href="/download"' in body


@pytest_twisted.ensureDeferred
async def test_download_page_and_install_script_name_this_server(server):
    base = f"https://127.0.0.1:{server.https_port}"
    code, page = await get(server, "/download")
    assert code == 200
    assert f"curl -fsSL {base}/install.sh | sh" in page
    assert f"{base}/download/windows" in page
    response = await server.http.get(server.url("/install.sh"))
    script = (await response.content()).decode()
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(
        b"text/x-shellscript"
    )
    assert f'BASE="{base}"' in script and "python3" in script


@pytest_twisted.ensureDeferred
async def test_hostile_host_header_cannot_reach_the_script(server):
    response = await server.http.get(
        server.url("/install.sh"), headers={"Host": 'evil"; rm -rf ~; "'}
    )
    script = (await response.content()).decode()
    assert 'BASE="https://localhost"' in script
    assert "rm -rf" not in script


@pytest_twisted.ensureDeferred
async def test_server_serves_the_client_it_built_at_startup(server):
    # No build step: the server built dk.pyz beside its database.
    response = await server.http.get(server.url("/download/linux"))
    body = await response.content()
    assert response.code == 200
    assert body.startswith(b"#!/usr/bin/env python3\n")
    with open(server.config.client_path, "rb") as f:
        assert body == f.read()
    assert os.path.dirname(server.config.client_path) == os.path.dirname(
        server.config.db_path
    )
    code, body = await get(server, "/download/plan9")
    assert code == 404 and "linux" in body["message"]


@pytest_twisted.ensureDeferred
async def test_empty_operator_client_dir_is_a_clear_404(tmp_path):
    empty = tmp_path / "operator-dist"
    empty.mkdir()
    server = await start_server(make_config(tmp_path, client_dir=str(empty)))
    try:
        code, body = await get(server, "/download/linux")
        assert code == 404 and body["error"] is True
        assert "DK_CLIENT_DIR" in body["message"]
        assert "scripts/build-client" in body["message"]
        assert not os.path.exists(server.config.client_path)
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_downloads_carry_filename_and_type(tmp_path):
    client_dir = tmp_path / "dist"
    client_dir.mkdir()
    artifact = client_dir / "dk.pyz"
    with zipfile.ZipFile(artifact, "w") as z:
        z.writestr("__main__.py", "print('dk')\n")
    server = await start_server(make_config(tmp_path, client_dir=str(client_dir)))
    try:
        expected = {
            "linux": (b'attachment; filename="dk"', b"application/octet-stream"),
            "darwin": (b'attachment; filename="dk"', b"application/octet-stream"),
            "windows": (b'attachment; filename="dk.pyz"', b"application/zip"),
        }
        for platform, (disposition, ctype) in expected.items():
            response = await server.http.get(server.url(f"/download/{platform}"))
            body = await response.content()
            assert response.code == 200
            assert body == artifact.read_bytes()
            assert response.headers.getRawHeaders(b"content-disposition") == [
                disposition
            ]
            assert response.headers.getRawHeaders(b"content-type") == [ctype]
    finally:
        await stop_server(server)


USER_AGENTS = {
    "linux": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
    "Chrome/120 Safari/537.36",
    "darwin": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/537.36 "
    "Chrome/120 Safari/537.36",
    "windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "Chrome/120 Safari/537.36",
}


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (.ci/run installs it)",
)
@pytest_twisted.ensureDeferred
async def test_download_page_detects_platform_in_headless_chromium(server, tmp_path):
    assert CHROMIUM, "chromium must be installed for this test in CI"
    for platform, agent in USER_AGENTS.items():
        out, err, code = await utils.getProcessOutputAndValue(
            CHROMIUM,
            [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--ignore-certificate-errors",
                f"--user-data-dir={tmp_path / platform}",
                f"--user-agent={agent}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                server.url("/download"),
            ],
            env=os.environ,
        )
        dom = out.decode()
        assert code == 0, err.decode()[-2000:]
        assert f'id="detected" data-platform="{platform}"' in dom, dom[:3000]
        assert f'class="platform detected" data-platform="{platform}"' in dom


@pytest_twisted.ensureDeferred
async def test_client_that_cannot_be_built_is_a_clear_503(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the client's directory would be")
    server = await start_server(
        make_config(tmp_path, client_path=str(blocker / "dk.pyz"))
    )
    try:
        code, body = await get(server, "/download/linux")
        assert code == 503 and body["error"] is True
        assert body["message"] == "The client could not be built on this server"
        # The rest of the site is unaffected.
        code, _ = await get(server, "/download")
        assert code == 200
    finally:
        await stop_server(server)
