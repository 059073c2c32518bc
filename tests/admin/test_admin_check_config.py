"""``dkserver check-config`` (and its alias ``checkconfig``) through the real
entry point: the server's own parse, every setting printed, secrets masked."""

from __future__ import annotations

import dataclasses

from dkserver.config import Config
from tests.admin.admincli import dkserver, sqlite_database

FIELDS = [f.name for f in dataclasses.fields(Config)]


def test_prints_every_setting_with_its_effective_value(tmp_path):
    db = sqlite_database(tmp_path / "dk.db")
    result = dkserver(
        "check-config",
        "--https",
        "127.0.0.1:8443",
        "--http",
        "none",
        "--db",
        db,
        MESSAGE_RATE_LIMIT="7",
        DK_ADMIN_USERS="root,alice",
        cwd=tmp_path,
    )
    assert result.rc == 0, result
    lines = result.out.splitlines()
    assert lines[0] == (
        f"configuration OK: https 127.0.0.1:8443, http none, database {db}"
    )
    settings = dict(line.split(None, 1) for line in lines[1:])
    assert list(settings) == FIELDS
    assert settings["message_rate"] == "7.0"
    assert settings["admin_users"] == "alice,root"
    assert settings["http"] == "-"
    assert settings["jwt_secret"] == "-"
    assert settings["jwt_secret_path"] == f"{db}.jwt-secret"


def test_json_masks_the_jwt_secret_and_both_passwords(tmp_path, pg_url):
    password = pg_url.split("@")[0].rsplit(":", 1)[1]
    result = dkserver(
        "check-config",
        "--json",
        "--db",
        pg_url,
        "--redis",
        "redis://:redis-pw-123@127.0.0.1:6390/3",
        JWT_SECRET="jwt-secret-that-is-long-enough-123",
        DK_JWT_SECRET_FILE=str(tmp_path / "secret"),
        cwd=tmp_path,
    )
    doc = result.json()
    assert doc["valid"] is True
    config = doc["config"]
    assert list(config) == FIELDS
    assert config["jwt_secret"] == "***"
    assert config["redis"] == "redis://***@127.0.0.1:6390/3"
    assert config["database"].startswith("postgresql://dk:***@")
    assert config["db_path"] == config["database"]
    assert config["db_pool_size"] == 8 and config["proxy_protocol"] is False
    for secret in (password, "redis-pw-123", "jwt-secret-that"):
        assert secret not in result.out + result.err


def test_checkconfig_is_the_same_command(tmp_path):
    db = sqlite_database(tmp_path / "dk.db")
    new = dkserver("check-config", "--json", "--db", db, cwd=tmp_path)
    old = dkserver("checkconfig", "--json", "--db", db, cwd=tmp_path)
    assert new.rc == old.rc == 0
    assert new.json() == old.json()


def test_the_first_invalid_setting_is_one_line_exit_2(tmp_path):
    for args, env, message in [
        (("--https", ":99999"), {}, "https: port out of range in ':99999'"),
        ((), {"MESSAGE_BURST_LIMIT": "lots"}, "MESSAGE_BURST_LIMIT: not an integer"),
        ((), {"DK_TRACKER_DIR": str(tmp_path / "no")}, "DK_TRACKER_DIR: "),
        (("--no-such-option",), {}, "option --no-such-option not recognized"),
    ]:
        for json_flag in ((), ("--json",)):
            result = dkserver("check-config", *json_flag, *args, cwd=tmp_path, **env)
            assert result.rc == 2 and result.out == "", result
            line = result.one_error_line("dkserver: error: ")
            assert message in line, line


def test_an_unusable_database_is_exit_2_and_nothing_is_created(tmp_path):
    result = dkserver("check-config", "--db", str(tmp_path / "no" / "dk.db"))
    assert result.rc == 2
    line = result.one_error_line("dkserver: error: DK_DB/--db: database directory ")
    assert line.endswith("does not exist")
    assert not (tmp_path / "no").exists()


def test_help_is_the_servers_options(tmp_path):
    result = dkserver("check-config", "--help")
    assert result.rc == 0
    assert result.out.startswith("Usage: dkserver check-config [--json] [options]")
    assert "--db=" in result.out and "--https=" in result.out
