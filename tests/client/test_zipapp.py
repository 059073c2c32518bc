"""scripts/build-client makes dist/dk.pyz; the single file runs the CLI."""

from __future__ import annotations

import json
import sys
import zipfile

import pytest_twisted

from tests.client.dkcli import REPO, Dk, child_env, spawn, wait_online


async def build(tmp_path):
    pyz = tmp_path / "dk.pyz"
    # With this interpreter's packages, not whatever the checkout's .venv has.
    result = await spawn(
        ["/bin/bash", str(REPO / "scripts" / "build-client"), "-o", str(pyz)],
        env=child_env(DK_BUILD_PYTHON=sys.executable),
    )
    assert result.code == 0, str(result)
    return pyz


def pyz_env() -> dict[str, str]:
    env = child_env()
    del env["PYTHONPATH"]  # everything must come from the archive
    return env


@pytest_twisted.ensureDeferred
async def test_built_zipapp_contains_only_the_client_and_pure_python_websockets(
    tmp_path,
):
    pyz = await build(tmp_path)
    with zipfile.ZipFile(pyz) as z:
        names = z.namelist()
    assert "__main__.py" in names
    assert "dkclient/cli.py" in names and "dkclient/crypto.py" in names
    assert "websockets/asyncio/client.py" in names
    # The client is its own package: nothing of the server goes in.
    assert not [n for n in names if n.startswith("dkserver/")], names
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc"))]
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")

    help_ = await spawn([sys.executable, str(pyz), "--help"], env=pyz_env())
    assert help_.code == 0 and "usage: dk" in help_.out, str(help_)
    version = await spawn([sys.executable, str(pyz), "version"], env=pyz_env())
    assert version.code == 0, str(version)
    assert "websockets " in version.out and "dk.pyz" in version.out, str(version)


@pytest_twisted.ensureDeferred
async def test_zipapp_sends_and_listens(server, tmp_path):
    pyz = await build(tmp_path)
    command = (sys.executable, str(pyz))
    alice = Dk(server, tmp_path / "alice", command)
    bob = Dk(server, tmp_path / "bob", command)
    for dk, user in ((alice, "alice"), (bob, "bob")):
        result = await spawn(dk.argv("init", user), env=pyz_env())
        assert result.code == 0, str(result)

    listening = spawn(
        bob.argv("listen", "--json", "--count", "1", "--timeout", "20"), env=pyz_env()
    )
    await wait_online(server, "bob")
    sent = await spawn(
        alice.argv("send", "bob", "hello from the zipapp"), env=pyz_env()
    )
    assert sent.code == 0, str(sent)
    result = await listening
    assert result.code == 0, str(result)
    [line] = [json.loads(x) for x in result.out.splitlines() if x.strip()]
    assert line["content"] == "hello from the zipapp"
    assert line["verified"] is True and line["from"] == "alice"
