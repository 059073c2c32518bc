"""``dkserver``: the operator's command line (dkserver/cli.py)."""

from __future__ import annotations

import os

import pytest

import dkserver
from dkserver import cli


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("DK_", "MESSAGE_", "LOGIN_")) or name in (
            "SERVER_ADDR",
            "HTTP_ADDR",
            "JWT_SECRET",
        ):
            monkeypatch.delenv(name)


def test_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("serve", "checkconfig", "tac-path"):
        assert command in out


def test_version_is_the_package_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"dkserver {dkserver.__version__}"


def test_no_command_prints_help_and_exits_2(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "serve" in err


def test_unknown_command_is_one_line_and_exit_2(capsys):
    code, out, err = run(capsys, "frobnicate")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "invalid choice: 'frobnicate'" in err


def test_unexpected_argument_to_a_plain_command_is_exit_2(capsys):
    code, _, err = run(capsys, "tac-path", "extra")
    assert code == 2 and "unrecognized arguments: extra" in err


def test_checkconfig_accepts_valid_options(capsys, tmp_path):
    db = str(tmp_path / "dk.db")
    code, out, _ = run(
        capsys, "checkconfig", "--https", "127.0.0.1:8443", "--http", "none", "--db", db
    )
    assert code == 0
    assert out.splitlines()[0] == (
        f"configuration OK: https 127.0.0.1:8443, http none, database {db}"
    )
    # Only parsed: nothing is created.
    assert list(tmp_path.iterdir()) == []


def test_checkconfig_names_the_proxy_protocol(capsys, tmp_path):
    db = str(tmp_path / "dk.db")
    code, out, _ = run(
        capsys, "checkconfig", "--https", ":8443", "--proxy-protocol", "--db", db
    )
    assert code == 0
    assert out.startswith("configuration OK: https :8443 (PROXY protocol), http ")


def test_checkconfig_reports_a_bad_option_in_one_line_exit_2(capsys):
    code, out, err = run(capsys, "checkconfig", "--https", ":99999")
    assert code == 2 and out == ""
    assert err == "dkserver: error: https: port out of range in ':99999'\n"


def test_checkconfig_reads_the_environment_as_the_server_does(capsys, monkeypatch):
    monkeypatch.setenv("MESSAGE_RATE_LIMIT", "fast")
    code, _, err = run(capsys, "checkconfig")
    assert code == 2
    assert err == "dkserver: error: MESSAGE_RATE_LIMIT: not a number: 'fast'\n"


def test_checkconfig_unknown_server_option_exit_2(capsys):
    code, _, err = run(capsys, "checkconfig", "--no-such-option")
    assert code == 2 and err.count("\n") == 1 and "--no-such-option" in err


def test_serve_refuses_bad_options_before_starting_twistd(capsys, monkeypatch):
    started = []
    monkeypatch.setattr(
        "twisted.scripts.twistd.run", lambda: started.append(True), raising=True
    )
    code, _, err = run(capsys, "serve", "--rate", "0")
    assert code == 2 and started == []
    assert (
        err
        == "dkserver: error: MESSAGE_RATE_LIMIT: must be a positive number, got '0'\n"
    )


def test_serve_runs_twistd_in_the_foreground_without_a_pidfile(capsys, monkeypatch):
    import sys

    argv_seen = []
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(
        "twisted.scripts.twistd.run", lambda: argv_seen.append(list(sys.argv))
    )
    code, _, _ = run(capsys, "serve", "--db", "/tmp/x.db", "--http", "none")
    assert code == 0
    assert argv_seen == [
        [
            "twistd",
            "-n",
            "--pidfile=",
            "dkserver",
            "--db",
            "/tmp/x.db",
            "--http",
            "none",
        ]
    ]


def test_tac_path_names_the_installed_tac_file(capsys):
    code, out, _ = run(capsys, "tac-path")
    path = out.strip()
    assert code == 0 and path.endswith(os.path.join("dkserver", "tac", "dkserver.tac"))
    with open(path) as f:
        assert "makeService(options).setServiceParent(application)" in f.read()


def test_checkconfig_makes_the_database_checks_of_startup_exit_2(capsys, tmp_path):
    code, out, err = run(capsys, "checkconfig", "--db", str(tmp_path / "no" / "x.db"))
    assert code == 2 and out == ""
    assert err.startswith("dkserver: error: DK_DB/--db: database directory ")
    assert err.count("\n") == 1
    not_sqlite = tmp_path / "junk.db"
    not_sqlite.write_bytes(b"this is not a database" * 100)
    code, out, err = run(capsys, "checkconfig", "--db", str(not_sqlite))
    assert code == 2 and "not a usable SQLite database" in err
    assert not (tmp_path / "no").exists()


def test_port_db_is_a_dkserver_command_with_one_line_errors(capsys, tmp_path):
    code, out, err = run(capsys, "--help")
    assert code == 0 and "port-db" in out
    missing = tmp_path / "missing.db"
    code, out, err = run(
        capsys, "port-db", str(missing), "postgresql://u@127.0.0.1:1/db"
    )
    assert code == 2 and out == ""
    assert err == f"port-db: SQLITE_PATH {missing} does not exist\n"


def test_checkconfig_on_postgresql_connects_masks_the_password_and_creates_nothing(
    capsys, tmp_path, pg_empty_url, monkeypatch
):
    secret = tmp_path / "jwt"
    monkeypatch.setenv("DK_JWT_SECRET_FILE", str(secret))
    code, out, err = run(
        capsys, "checkconfig", "--https", ":8443", "--db", pg_empty_url
    )
    password = pg_empty_url.split("@")[0].rsplit(":", 1)[1]
    assert code == 0, err
    assert "configuration OK" in out and password not in out + err
    import psycopg

    with psycopg.connect(pg_empty_url) as conn:
        assert (
            conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None
        )


def test_checkconfig_on_an_unreachable_postgresql_is_one_line_exit_2(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("DK_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    monkeypatch.setenv("DK_DB_CONNECT_TIMEOUT", "2")
    url = "postgresql://dk:hunter2@127.0.0.1:1/dk"
    code, _, err = run(capsys, "checkconfig", "--db", url)
    assert code == 2
    assert "cannot connect to PostgreSQL" in err and "hunter2" not in err
    assert len(err.strip().splitlines()) == 1
