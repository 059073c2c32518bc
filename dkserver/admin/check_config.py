"""``dkserver check-config [--json] [server options]`` (alias ``checkconfig``):
validate the configuration exactly as the server does and print it.

The parse is the server's own (``dkserver.tap.Options`` over the command
line and the environment, then the database checks startup makes, which
create and migrate nothing), so a configuration this command accepts is
one ``twistd dkserver`` starts with, and the first invalid setting is
reported in the one line startup would stop with.  The effective value of
every `Config` field is printed, secrets masked: the JWT secret, and the
passwords in the database and Redis URLs.

Exit status: 0 valid; 2 a setting is invalid or the database cannot be used
(unreachable PostgreSQL included: the server would not start either).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from dkserver.config import Config

from . import context

NAME = "check-config"
ALIASES = ("checkconfig",)

#: What a set secret shows as.
MASK = "***"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check-config`` (and ``checkconfig``) to the ``dkserver`` command."""
    parser = subparsers.add_parser(
        NAME,
        aliases=list(ALIASES),
        help="validate the configuration ([server options] and the environment) "
        "as the server would and print it, secrets masked; exit 2 if invalid",
        # the server's own options pass through; --help is theirs
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=run, passthrough=True)


def run(args: argparse.Namespace) -> int:
    from twisted.python import usage

    from dkserver.cli import EXIT_USAGE, parse_server_options
    from dkserver.store import StoreError, preflight_database

    try:
        options = parse_server_options(f"{args.command} [--json]", args.options)
    except usage.UsageError as e:
        return _invalid(str(e), EXIT_USAGE)
    config = options.config
    try:
        # The checks the server makes before it serves; they create nothing.
        preflight_database(config.database, config.db_connect_timeout, migrate=False)
    except (StoreError, ValueError, OSError) as e:
        return _invalid(f"DK_DB/--db: {context.one_line(e)}", EXIT_USAGE)
    settings = effective(config)
    proxied = " (PROXY protocol)" if config.proxy_protocol else ""
    width = max(len(name) for name in settings)
    context.emit(
        args,
        {"valid": True, "config": settings},
        [
            f"configuration OK: https {config.https}{proxied}, "
            f"http {config.http or 'none'}, database {config.database.redacted}",
            *(f"  {name:<{width}}  {_text(value)}" for name, value in settings.items()),
        ],
    )
    return 0


def _invalid(message: str, code: int) -> int:
    sys.stderr.write(f"dkserver: error: {message}\n")
    return code


def effective(config: Config) -> dict[str, Any]:
    """Every field of ``config`` as JSON values, secrets masked."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "jwt_secret":
            value = None if value is None else MASK
        elif f.name == "db_path":
            value = config.database.redacted  # the text may hold a password
        elif f.name in ("database", "redis"):
            value = None if value is None else value.redacted
        elif isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list):
        return ",".join(value) if value else "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)
