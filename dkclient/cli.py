"""``dk``: the command-line client (argument parsing and dispatch).

Only the standard library (and :mod:`dkclient.exits`) is imported here, so a
missing native dependency (pynacl, cryptography) is reported with the command
that installs it rather than a traceback.  The commands live in
:mod:`dkclient.commands`, imported once the dependencies are known to be
there; they take the parsed arguments and never import this module, so the
import graph stays one-way (cli -> commands).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dkclient import __version__
from dkclient.exits import EXIT_MISSING_DEPENDENCY, EXIT_USAGE

_DEPENDENCIES = (
    ("nacl.bindings", "pynacl"),
    ("cryptography.hazmat.primitives.ciphers.aead", "cryptography"),
    ("websockets.asyncio.client", "websockets"),
)

DESCRIPTION = """\
Client for dkserver (DistributedKnowledge messaging): end-to-end encrypted,
signed direct messages, broadcasts, presence and profile descriptions.

Start with:  dk --server https://HOST init YOUR_ID
"""

EPILOG = """\
environment:
  DK_HOME      directory for keys and the last token (like --home)
  DK_SERVER    server URL (like --server; default: the one given at init)
  DK_CACERT    CA or self-signed certificate file to trust (like --cacert)
  DK_INSECURE  1 to skip certificate verification (like --insecure)

exit status: 0 ok, 1 error, 2 usage, 3 not initialised, 4 server unreachable,
5 login failed, 6 unknown user, 7 missing dependency, 8 key changed (see
dk trust), 124 listen --timeout passed before --count messages arrived,
130 interrupted.
"""


def missing_dependencies() -> list[str]:
    missing = []
    for module, package in _DEPENDENCIES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def dependency_help(missing: list[str]) -> str:
    packages = " ".join(missing)
    text = (
        f"dk: error: missing Python package(s): {', '.join(missing)}\n"
        f"dk needs them at run time; install them with:\n\n"
        f"    python3 -m pip install --user {packages}\n"
    )
    exe = sys.executable or "python3"
    if os.path.basename(exe) != "python3":
        text += f"\n(for this interpreter: {exe} -m pip install --user {packages})\n"
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dk",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dk {__version__}")
    parser.add_argument(
        "--server", metavar="URL", help="server, e.g. https://dk.example"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="accept any certificate (self-signed development servers)",
    )
    parser.add_argument(
        "--cacert", metavar="FILE", help="trust this CA / self-signed certificate"
    )
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="keys and token directory (default: $DK_HOME "
        "or the platform's config directory, e.g. ~/.config/dk)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log connection events"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init", help="create keys and register USER_ID")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--username", metavar="NAME", help="display name (default: USER_ID)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing identity of another user (the old one is "
        "kept as identity.json.bak-TIME)",
    )

    sub.add_parser("login", help="log in now and store the token")
    sub.add_parser("whoami", help="show the identity in home")

    p = sub.add_parser("send", help="send an encrypted, signed direct message")
    p.add_argument("user", metavar="USER")
    p.add_argument(
        "text", metavar="TEXT", nargs="*", help="message text ('-' or none: stdin)"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="how long to wait for a refusal from the server (default 0.5)",
    )

    p = sub.add_parser("broadcast", help="send a signed message to everyone")
    p.add_argument("text", metavar="TEXT", nargs="*", help="'-' or none: stdin")
    p.add_argument("--wait", type=float, default=0.5, metavar="SECONDS")

    p = sub.add_parser("listen", help="print messages as they arrive")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="exit after SECONDS without a message",
    )

    p = sub.add_parser("users", help="list online and offline users")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "describe",
        help="set your descriptions (one per TEXT), or show them",
    )
    p.add_argument("text", metavar="TEXT", nargs="*")
    p.add_argument("--user", metavar="USER", help="show USER's descriptions")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "trust",
        help="accept USER's new key (after a key-change warning)",
        description="Pin USER's key: the one the server gives now, or --key. "
        "dk pins every peer's key the first time it sees it and warns when the "
        "server later gives another; compare the fingerprint with USER (dk whoami "
        "shows it) before accepting it.",
    )
    p.add_argument("user", metavar="USER")
    p.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    p.add_argument(
        "--key",
        metavar="BASE64",
        help="pin this public key (got from USER directly) instead of the server's",
    )

    p = sub.add_parser(
        "serve-forward",
        help="answer /direct-message/ queries with a command's output",
        description="Answer forward requests (POST /direct-message/) with the "
        "standard output of CMD.  The query is on CMD's stdin (and in $DK_QUERY); "
        "with --arg it is also passed as the last argument.  A single CMD word "
        "runs through /bin/sh -c (so 'tr a-z A-Z' works); several words run "
        "directly.",
    )
    p.add_argument("--arg", action="store_true", help="pass the query as an argument")
    p.add_argument("--count", type=int, metavar="N", help="exit after N answers")
    p.add_argument(
        "--cmd-timeout",
        type=float,
        default=25.0,
        metavar="SECONDS",
        help="kill CMD after this long (default 25; the server waits 30)",
    )
    p.add_argument("cmd", metavar="CMD", nargs=argparse.REMAINDER)

    p = sub.add_parser("ask", help="ask your own connected client (forward API)")
    p.add_argument("text", metavar="QUERY", nargs="+")

    sub.add_parser("version", help="show versions of dk and its dependencies")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    missing = missing_dependencies()
    if missing:
        sys.stderr.write(dependency_help(missing))
        return EXIT_MISSING_DEPENDENCY
    from dkclient import commands

    return commands.run(args)


if __name__ == "__main__":
    sys.exit(main())
