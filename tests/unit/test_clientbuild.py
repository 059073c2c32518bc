"""dkserver/clientbuild.py: the one builder of dk.pyz (the server at startup,
scripts/build-client for an operator)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from dkserver import clientbuild


def test_build_holds_the_client_and_pure_python_websockets_only(tmp_path):
    built = clientbuild.build(str(tmp_path / "dk.pyz"))
    assert built.rebuilt
    data = (tmp_path / "dk.pyz").read_bytes()
    assert data.startswith(clientbuild.SHEBANG)
    with zipfile.ZipFile(tmp_path / "dk.pyz") as z:
        names = z.namelist()
        main = z.read("__main__.py").decode()
    assert "dkclient/cli.py" in names and "websockets/asyncio/client.py" in names
    assert not [n for n in names if n.startswith("dkserver/")]
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc", ".c"))]
    assert not [n for n in names if "__pycache__" in n]
    assert f"websockets {built.websockets_version} vendored" in main
    assert (tmp_path / "dk.pyz").stat().st_mode & 0o777 == 0o755


def test_equal_inputs_give_identical_archives_and_the_old_one_is_kept(tmp_path):
    first = clientbuild.build(str(tmp_path / "a.pyz"))
    second = clientbuild.build(str(tmp_path / "b.pyz"))
    assert (tmp_path / "a.pyz").read_bytes() == (tmp_path / "b.pyz").read_bytes()
    assert first.digest == second.digest

    before = (tmp_path / "a.pyz").stat().st_mtime_ns
    again = clientbuild.build(str(tmp_path / "a.pyz"))
    assert not again.rebuilt
    assert (tmp_path / "a.pyz").stat().st_mtime_ns == before
    assert clientbuild.existing_digest(str(tmp_path / "a.pyz")) == first.digest


def test_a_foreign_or_broken_archive_is_replaced_without_leftovers(tmp_path):
    target = tmp_path / "dk.pyz"
    target.write_bytes(b"decoy: not a zip")
    assert clientbuild.existing_digest(str(target)) is None
    assert clientbuild.build(str(target)).rebuilt
    assert zipfile.is_zipfile(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dk.pyz"]


def test_building_imports_neither_the_client_nor_websockets(tmp_path):
    # The server builds the client but must never import it.
    code = (
        "import sys; from dkserver import clientbuild; "
        f"clientbuild.build({str(tmp_path / 'dk.pyz')!r}); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('dkclient', 'websockets')]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_command_line_reports_built_then_unchanged(tmp_path, capsys):
    out = str(tmp_path / "dist" / "dk.pyz")
    assert clientbuild.main(["-o", out]) == 0
    assert capsys.readouterr().out.startswith(f"built {out} (")
    assert clientbuild.main(["-o", out]) == 0
    assert capsys.readouterr().out.startswith(f"unchanged {out} (")
