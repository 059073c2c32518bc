"""``dkserver``: the operator's command (the admin CLI starts here).

``dkserver serve`` runs the server in the foreground (``twistd -n --pidfile=
dkserver ...``); the admin commands (``check-config``, ``user``, ``stats``,
``backup``, ``port-db``, ...) are modules of dkserver/admin, each adding
itself with ``add_parser`` (dkserver/admin/context.py).  Usage errors and
invalid settings print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module, resources

from dkserver import __version__

EXIT_OK = 0
EXIT_USAGE = 2

#: What ``serve`` hands to twistd before the dkserver options: foreground
#: (systemd and containers supervise), no pid file (they track the process).
TWISTD_ARGS = ("-n", "--pidfile=")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2)."""

    def error(self, message: str):
        self.exit(
            EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n"
        )


def parse_server_options(command: str, argv: Sequence[str]):
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
        parse_server_options(args.command, args.options)
    except usage.UsageError as e:
        return _usage_failure(e)
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *TWISTD_ARGS, "dkserver", *args.options]
    run()
    return EXIT_OK


def cmd_tac_path(args: argparse.Namespace) -> int:
    print(resources.files("dkserver").joinpath("tac", "dkserver.tac"))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "tac-path": cmd_tac_path,
}


#: The admin commands' modules, each adding itself with ``add_parser(sub)``
#: (dkserver/admin/context.py); one per line.
ADMIN_COMMANDS = (
    "dkserver.admin.check_config",
    "dkserver.admin.users",
    "dkserver.admin.accounts",
    "dkserver.admin.stats",
    "dkserver.admin.backup",
    "dkserver.admin.port_db",
    "dkserver.admin.prune",
)

#: Commands whose arguments are the server's options (admin commands say
#: so with ``set_defaults(passthrough=True)``: check-config).
PASSTHROUGH = frozenset({"serve"})


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
    # serve (and check-config) take the server's own options (dkserver.tap),
    # passed through unparsed; their --help is the server's.
    sub.add_parser(
        "serve",
        help="run the server in the foreground (twistd -n --pidfile= dkserver "
        "[server options])",
        add_help=False,
    )
    sub.add_parser(
        "tac-path",
        help="print where the installed dkserver.tac is (twistd -ny FILE)",
    )
    for name in ADMIN_COMMANDS:
        import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command in PASSTHROUGH or getattr(args, "passthrough", False):
        args.options = rest
    elif rest:
        # the command's own parser, when it says which (context.add_common_options)
        owner = getattr(args, "command_parser", parser)
        owner.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    run = getattr(args, "run", None)  # admin commands carry their own
    return run(args) if run is not None else COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
