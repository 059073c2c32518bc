"""``dkserver``: the operator's command (the admin CLI starts here).

``dkserver serve`` runs the server in the foreground (``twistd -n --pidfile=
dkserver ...``), ``dkserver checkconfig`` parses the configuration exactly as
the server does and reports the one-line error a start would stop with.
Usage errors and invalid settings print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import resources

from dkserver import __version__

EXIT_OK = 0
EXIT_USAGE = 2

#: What ``serve`` hands to twistd before the dkserver options: foreground
#: (systemd and containers supervise), no pid file (they track the process).
TWISTD_ARGS = ("-n", "--pidfile=")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see dkserver --help)\n")


def _parse_server_options(command: str, argv: Sequence[str]):
    """The server's own options (dkserver.tap.Options) with the environment:
    the exact parse ``twistd dkserver`` does; raises usage.UsageError."""
    from dkserver.tap import Options

    options = Options()
    options.synopsis = f"Usage: dkserver {command} [options]"
    options.parseOptions(list(argv))
    return options


def _usage_failure(error: Exception) -> int:
    sys.stderr.write(f"dkserver: error: {error}\n")
    return EXIT_USAGE


def cmd_serve(args: argparse.Namespace) -> int:
    from twisted.python import usage

    try:
        _parse_server_options(args.command, args.options)
    except usage.UsageError as e:
        return _usage_failure(e)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *TWISTD_ARGS, "dkserver", *args.options]
    run()
    return EXIT_OK


def cmd_checkconfig(args: argparse.Namespace) -> int:
    from twisted.python import usage

    try:
        options = _parse_server_options(args.command, args.options)
    except usage.UsageError as e:
        return _usage_failure(e)
    config = options.config
    from dkserver.store import StoreError, preflight_database

    try:
        # The checks the server makes before it serves; they create nothing.
        preflight_database(config.database, config.db_connect_timeout, migrate=False)
    except (StoreError, ValueError, OSError) as e:
        return _usage_failure(f"DK_DB/--db: {e}")
    proxied = " (PROXY protocol)" if config.proxy_protocol else ""
    print(
        f"configuration OK: https {config.https}{proxied}, "
        f"http {config.http or 'none'}, database {config.database.redacted}"
    )
    return EXIT_OK


def cmd_tac_path(args: argparse.Namespace) -> int:
    print(resources.files("dkserver").joinpath("tac", "dkserver.tac"))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "checkconfig": cmd_checkconfig,
    "tac-path": cmd_tac_path,
}


#: Commands whose arguments are the server's options.
PASSTHROUGH = frozenset({"serve", "checkconfig"})


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dkserver",
        description="Run and administer dkserver, the DistributedKnowledge "
        "messaging server.",
        epilog="Server options (the same as `twistd dkserver`): "
        "dkserver serve --help. Environment variables: README.md.",
    )
    parser.add_argument(
        "--version", action="version", version=f"dkserver {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # serve and checkconfig take the server's own options (dkserver.tap),
    # passed through unparsed; their --help is the server's.
    sub.add_parser(
        "serve",
        help="run the server in the foreground (twistd -n --pidfile= dkserver "
        "[server options])",
        add_help=False,
    )
    sub.add_parser(
        "checkconfig",
        help="parse the configuration ([server options] and the environment) "
        "as the server would; exit 2 if invalid",
        add_help=False,
    )
    sub.add_parser(
        "tac-path",
        help="print where the installed dkserver.tac is (twistd -ny FILE)",
    )
    from dkserver.admin import port_db, prune

    port_db.add_parser(sub)
    prune.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command in PASSTHROUGH:
        args.options = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    run = getattr(args, "run", None)  # admin commands carry their own
    return run(args) if run is not None else COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
