"""Every admin command explains itself (``--help``, exit 0) and is listed by
``dkserver --help``; a command group without its subcommand is exit 2."""

from __future__ import annotations

import pytest

from tests.admin.admincli import dkserver

COMMANDS = [
    ("check-config",),
    ("checkconfig",),
    ("user",),
    ("user", "show"),
    ("user", "list"),
    ("stats",),
    ("backup",),
    ("port-db",),
]


def test_dkserver_help_lists_the_admin_commands():
    result = dkserver("--help")
    assert result.rc == 0
    for name in ("check-config (checkconfig)", "user", "stats", "backup", "port-db"):
        assert f"    {name} " in result.out or f"    {name}\n" in result.out, name


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command):
    result = dkserver(*command, "--help")
    assert result.rc == 0, result
    assert result.err == ""
    assert result.out.lower().startswith("usage: dkserver " + " ".join(command))


def test_database_commands_document_db_and_json():
    for command in (("user", "show"), ("user", "list"), ("stats",), ("backup",)):
        out = dkserver(*command, "--help").out
        assert "--db DATABASE" in out and "--json" in out and "DK_DB" in out


def test_user_without_a_subcommand_is_one_line_exit_2():
    result = dkserver("user")
    assert result.rc == 2 and result.out == ""
    assert "the following arguments are required: COMMAND" in result.one_error_line(
        "dkserver user: error: "
    )


def test_an_unknown_user_subcommand_is_one_line_exit_2():
    result = dkserver("user", "frobnicate")
    assert result.rc == 2 and result.out == ""
    assert "invalid choice: 'frobnicate'" in result.one_error_line("dkserver user")
