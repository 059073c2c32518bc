"""End to end: /tracker-apps, /tracker-folder/{name} and /download/app/{platform}
from the operator's folders (DK_TRACKER_DIR, DK_APP_DIR), beside the dk
client's own /download/{platform}."""

from __future__ import annotations

import os
import zipfile

import pytest_twisted

from dkserver.web.files import APP_FILES
from tests.support.client import get
from tests.support.server import make_config, start_server, stop_server

TRACKER_LIST = b'[{"name": "steps", "version": "1.0", "description": "d"}]'


def assert_json_error(code: int, body, status: int | tuple[int, ...]) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert code in statuses, (code, body)
    assert isinstance(body, dict) and body.get("error") is True, body


def make_zip(path, member: str) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, f"contents of {member}\n" * 50)
    return path.read_bytes()


def operator_folders(tmp_path):
    """A tracker folder and an app folder as an operator would lay them out,
    plus a secret outside both that nothing may serve."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.zip").write_bytes(b"SECRET")
    (outside / "tracker_list.json").write_bytes(b'"SECRET"')

    trackers = tmp_path / "trackers"
    trackers.mkdir()
    (trackers / "tracker_list.json").write_bytes(TRACKER_LIST)
    packages = {"steps": make_zip(trackers / "steps.zip", "steps/app.py")}
    (trackers / "sleep_v2").mkdir()
    packages["sleep_v2"] = make_zip(trackers / "sleep_v2" / "sleep_v2.zip", "s.py")
    # a link inside the folder to a file inside it is served ...
    os.symlink(trackers / "steps.zip", trackers / "steps-latest.zip")
    packages["steps-latest"] = packages["steps"]
    # ... a link out of the folder is not
    os.symlink(outside / "secret.zip", trackers / "leak.zip")
    os.symlink(outside, trackers / "leakdir")
    # a directory named like a package is not a package
    (trackers / "dir.zip").mkdir()

    apps = tmp_path / "apps"
    apps.mkdir()
    binaries = {}
    for platform, name in APP_FILES.items():
        binaries[platform] = f"{platform} binary ".encode() * 1000
        (apps / name).write_bytes(binaries[platform])
    return trackers, apps, packages, binaries


@pytest_twisted.ensureDeferred
async def test_unconfigured_folders_are_404_json_and_dk_downloads_unaffected(server):
    for path in (
        "/tracker-apps",
        "/tracker-folder/steps",
        "/download/app/linux",
        "/download/app/windows",
    ):
        assert_json_error(*await get(server, path), 404)
    # the dk client's route still answers for itself: the server's own build
    response = await server.http.get(server.url("/download/linux"))
    assert response.code == 200
    assert (await response.content()).startswith(b"#!/usr/bin/env python3")


@pytest_twisted.ensureDeferred
async def test_tracker_list_and_packages_are_served(tmp_path):
    trackers, _, packages, _ = operator_folders(tmp_path)
    server = await start_server(make_config(tmp_path, tracker_dir=str(trackers)))
    try:
        response = await server.http.get(server.url("/tracker-apps"))
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert await response.content() == TRACKER_LIST

        for name, data in packages.items():
            response = await server.http.get(server.url(f"/tracker-folder/{name}"))
            assert response.code == 200, name
            assert await response.content() == data
            assert response.headers.getRawHeaders(b"content-type") == [
                b"application/zip"
            ]
            assert response.headers.getRawHeaders(b"content-disposition") == [
                f'attachment; filename="{name}.zip"'.encode()
            ]

        # streamed by twisted.web.static.File: Range requests work
        response = await server.http.get(
            server.url("/tracker-folder/steps"), headers={"Range": "bytes=0-9"}
        )
        assert response.code == 206
        assert await response.content() == packages["steps"][:10]
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_no_name_reaches_outside_the_tracker_folder(tmp_path):
    trackers, _, _, _ = operator_folders(tmp_path)
    server = await start_server(make_config(tmp_path, tracker_dir=str(trackers)))
    try:
        for name in ("leak", "leakdir", "dir", "missing"):
            assert_json_error(*await get(server, f"/tracker-folder/{name}"), 404)
        for name in ("a.b", "steps.zip", "%00", "s%20p", "x" * 129, "caf%C3%A9"):
            assert_json_error(*await get(server, f"/tracker-folder/{name}"), 400)
        for path in (
            "/tracker-folder/..",
            "/tracker-folder/%2E%2E",
            "/tracker-folder/..%2Foutside%2Fsecret",
            "/tracker-folder/%2e%2e%2f%2e%2e%2foutside%2fsecret",
            "/tracker-folder/leakdir%2Fsecret",
            "/tracker-folder/leakdir/secret",
            "/tracker-folder/sleep_v2/sleep_v2",
            "/tracker-folder/..%5Coutside%5Csecret",
            "/tracker-folder/",
        ):
            response = await server.http.get(server.url(path))
            raw = await response.content()
            assert 400 <= response.code < 500, (path, response.code)
            assert b"SECRET" not in raw and b'"error":true' in raw, (path, raw)
    finally:
        await stop_server(server)


@pytest_twisted.ensureDeferred
async def test_desktop_app_downloads_beside_the_dk_client(tmp_path):
    _, apps, _, binaries = operator_folders(tmp_path)
    client_dir = tmp_path / "dist"
    client_dir.mkdir()
    dk = make_zip(client_dir / "dk.pyz", "__main__.py")
    server = await start_server(
        make_config(tmp_path, app_dir=str(apps), client_dir=str(client_dir))
    )
    try:
        for platform, data in binaries.items():
            response = await server.http.get(server.url(f"/download/app/{platform}"))
            assert response.code == 200, platform
            assert await response.content() == data
            assert response.headers.getRawHeaders(b"content-disposition") == [
                f'attachment; filename="{APP_FILES[platform]}"'.encode()
            ]
            assert response.headers.getRawHeaders(b"content-type") == [
                b"application/octet-stream"
            ]
            # /download/{platform} still serves the dk client
            response = await server.http.get(server.url(f"/download/{platform}"))
            assert response.code == 200
            assert await response.content() == dk

        response = await server.http.get(
            server.url("/download/app/linux"), headers={"Range": "bytes=5-"}
        )
        assert response.code == 206
        assert await response.content() == binaries["linux"][5:]

        assert_json_error(*await get(server, "/download/app/plan9"), 404)
        assert_json_error(*await get(server, "/download/app/..%2F..%2Fdk.pyz"), 404)
        # /download/app alone is the dk route with platform "app": a clear 404
        code, body = await get(server, "/download/app")
        assert_json_error(code, body, 404)
        assert "linux" in body["message"]

        os.remove(apps / APP_FILES["darwin"])
        assert_json_error(*await get(server, "/download/app/darwin"), 404)
    finally:
        await stop_server(server)
