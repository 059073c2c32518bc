"""Accounts that can be revoked, from the command line.

``dkserver user ban|unban|delete USER``, ``user rotate-key USER PUBKEY``,
``token revoke USER``, ``token rotate-secret [--grace 1d]`` and ``invite
create|list|revoke``.  Each change is one transaction that also writes the
version row the servers poll (dkserver.store.accounts), so a running server
(every node of a cluster) applies it within ``DK_REVOCATION_POLL`` (0.5 s):
closes the user's connections and refuses their tokens.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import time

from dkserver.auth.secret import SecretError, rotate_secret_file
from dkserver.auth.validation import ValidationError, validate_public_key
from dkserver.cluster.secret import rotate_secret_txn
from dkserver.config import ConfigError, from_sources
from dkserver.store import accounts
from dkserver.store.accounts import SECRET_VERSION, UnknownUser

from . import context
from .errors import AdminError
from .users import GROUP_HELP as USER_GROUP_HELP

#: ``token rotate-secret`` without ``--grace``: the token lifetime, so every
#: token signed with the old secret still works until it expires anyway.
DEFAULT_GRACE = "1d"
#: ``invite create`` without ``--uses`` / ``--expires``.
DEFAULT_USES = 1
DEFAULT_EXPIRES = "7d"
MAX_USES = 1_000_000

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or plain seconds, >= 0."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 90s, 30m, 12h, 7d or 2w"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds > 100 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is too long")
    return seconds


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _parser(group, name: str, help: str, description: str, run, label: str):
    parser = group.add_parser(name, help=help, description=description)
    parser.set_defaults(run=context.command(label, run))
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    users = context.command_group(subparsers, "user", USER_GROUP_HELP)
    for name, help, description, run in (
        (
            "ban",
            "ban a user: closes their connections, refuses their logins and tokens",
            "Ban USER. Running servers close the user's WebSocket connections "
            "(close code 4003) and refuse their tokens and logins (403) within "
            "DK_REVOCATION_POLL. Every token issued before stays refused after "
            "an unban. Exit 2 if there is no such user.",
            run_ban,
        ),
        (
            "unban",
            "let a banned user log in again",
            "Make a banned USER active again; they log in anew (their old "
            "tokens stay refused). Exit 2 if there is no such user.",
            run_unban,
        ),
        (
            "delete",
            "delete a user (the id stays taken)",
            "Delete USER: their descriptions, trackers, APIs and the direct "
            "messages still pending for them are removed; the row stays as a "
            "tombstone so the id cannot be registered again, and messages they "
            "sent keep their sender. They are refused as a banned user is. "
            "Exit 2 if there is no such user.",
            run_delete,
        ),
    ):
        parser = _parser(users, name, help, description, run, f"user {name}")
        parser.add_argument("user_id", metavar="USER", help="the user id")
        context.add_common_options(parser)

    rotate = _parser(
        users,
        "rotate-key",
        "replace a user's public key (e.g. a lost or stolen key)",
        "Set USER's Ed25519 public key to PUBKEY (base64 of 32 bytes) and "
        "revoke every token issued before. Exit 2 if there is no such active "
        "user or PUBKEY is not a usable key.",
        run_rotate_key,
        "user rotate-key",
    )
    rotate.add_argument("user_id", metavar="USER", help="the user id")
    rotate.add_argument("public_key", metavar="PUBKEY", help="the new key, base64")
    context.add_common_options(rotate)

    tokens = context.command_group(
        subparsers, "token", "revoke tokens, rotate the secret"
    )
    revoke = _parser(
        tokens,
        "revoke",
        "every token of USER issued before now stops working",
        "Revoke every token of USER issued before now, on every server sharing "
        "the database, within DK_REVOCATION_POLL; their open connections close "
        "with code 4001. They can log in again. Exit 2 if there is no such user.",
        run_token_revoke,
        "token revoke",
    )
    revoke.add_argument("user_id", metavar="USER", help="the user id")
    context.add_common_options(revoke)

    secret = _parser(
        tokens,
        "rotate-secret",
        "sign new tokens with a new JWT secret; old tokens verify for --grace",
        "Generate a new JWT secret where the server keeps it (the file beside "
        "the database, DK_JWT_SECRET_FILE, or the database on PostgreSQL); "
        "tokens signed with the old one keep working for --grace, after which "
        "they are refused. Running servers switch within DK_REVOCATION_POLL. "
        "Refused (exit 2) when JWT_SECRET is set: change it and restart instead.",
        run_rotate_secret,
        "token rotate-secret",
    )
    secret.add_argument(
        "--grace",
        type=duration,
        default=duration(DEFAULT_GRACE),
        metavar="DURATION",
        help=f"how long old tokens still verify (default {DEFAULT_GRACE}, the "
        "token lifetime; 0 refuses them at once)",
    )
    secret.add_argument(
        "--jwt-secret-file",
        default=None,
        metavar="PATH",
        help="the server's secret file [env DK_JWT_SECRET_FILE, default "
        "<database>.jwt-secret for SQLite]",
    )
    context.add_common_options(secret)

    invites = context.command_group(
        subparsers, "invite", "invite codes for DK_REGISTRATION=invite"
    )
    create = _parser(
        invites,
        "create",
        "create an invite code (printed once; only its hash is kept)",
        "Create an invite code for POST /auth/register (field 'invite') while "
        "DK_REGISTRATION=invite. The code is printed once; the database keeps "
        "its hash, listed by its id.",
        run_invite_create,
        "invite create",
    )
    create.add_argument(
        "--uses",
        type=context.whole_number(1, MAX_USES),
        default=DEFAULT_USES,
        metavar="N",
        help=f"registrations it allows (default {DEFAULT_USES})",
    )
    create.add_argument(
        "--expires",
        type=duration,
        default=duration(DEFAULT_EXPIRES),
        metavar="DURATION",
        help=f"how long it is good for (default {DEFAULT_EXPIRES})",
    )
    context.add_common_options(create)
    listing = _parser(
        invites,
        "list",
        "invite codes, by id",
        "List invite codes by id (the start of their hash), with the uses "
        "left, expiry and whether revoked.",
        run_invite_list,
        "invite list",
    )
    context.add_common_options(listing)
    drop = _parser(
        invites,
        "revoke",
        "revoke an invite code",
        "Revoke the invite CODE (the code itself, or its id from invite list). "
        "Exit 2 if none matches. A code that begins with '-' (older versions "
        "made some) goes after '--': invite revoke -- -CODE.",
        run_invite_revoke,
        "invite revoke",
    )
    drop.add_argument("code", metavar="CODE", help="the code or its id")
    context.add_common_options(drop)


# -- users ---------------------------------------------------------------------


def _change(args: argparse.Namespace, txn_function, *more):
    with context.open_database(args) as db:
        try:
            with db.transaction() as txn:
                return txn_function(txn, args.user_id, *more)
        except UnknownUser:
            raise AdminError(f"no user {args.user_id!r}") from None


def run_ban(args: argparse.Namespace) -> None:
    before = _change(args, accounts.ban_txn, _now_ms())
    if before == accounts.DELETED:
        raise AdminError(f"user {args.user_id!r} is deleted; nothing to ban")
    context.emit(
        args,
        {"user_id": args.user_id, "status": accounts.BANNED, "before": before},
        [
            f"user {args.user_id} is banned"
            + (" (already was)" if before == accounts.BANNED else "")
        ],
    )


def run_unban(args: argparse.Namespace) -> None:
    before = _change(args, accounts.unban_txn)
    if before == accounts.DELETED:
        raise AdminError(f"user {args.user_id!r} is deleted; it cannot come back")
    context.emit(
        args,
        {"user_id": args.user_id, "status": accounts.ACTIVE, "before": before},
        [
            f"user {args.user_id} is active"
            + ("" if before == accounts.BANNED else " (was not banned)")
        ],
    )


def run_delete(args: argparse.Namespace) -> None:
    removed = _change(args, accounts.delete_txn, _now_ms())
    context.emit(
        args,
        {"user_id": args.user_id, "status": accounts.DELETED, "removed": removed},
        [
            f"user {args.user_id} is deleted; removed "
            + ", ".join(f"{count} {what}" for what, count in removed.items())
        ],
    )


def run_rotate_key(args: argparse.Namespace) -> None:
    try:
        validate_public_key(args.public_key)
    except ValidationError as e:
        raise AdminError(f"PUBKEY: {e}") from None
    with context.open_database(args) as db:
        try:
            with db.transaction() as txn:
                status = accounts.status_txn(txn, args.user_id)
                if status != accounts.ACTIVE:
                    raise AdminError(
                        f"user {args.user_id!r} is {status}; unban it first"
                    )
                accounts.rotate_key_txn(txn, args.user_id, args.public_key, _now_ms())
        except UnknownUser:
            raise AdminError(f"no user {args.user_id!r}") from None
    context.emit(
        args,
        {
            "user_id": args.user_id,
            "public_key": args.public_key,
            "tokens_revoked": True,
        },
        [f"user {args.user_id} has a new key; their earlier tokens are revoked"],
    )


def run_token_revoke(args: argparse.Namespace) -> None:
    now_ms = _now_ms()
    _change(args, accounts.revoke_tokens_txn, now_ms)
    context.emit(
        args,
        {"user_id": args.user_id, "tokens_valid_after_ms": now_ms},
        [f"every token of {args.user_id} issued before now is revoked"],
    )


# -- the secret ------------------------------------------------------------------


def run_rotate_secret(args: argparse.Namespace) -> None:
    environ = {
        k: os.environ[k]
        for k in (*context.DATABASE_SETTINGS, "JWT_SECRET", "DK_JWT_SECRET_FILE")
        if k in os.environ
    }
    try:
        config = from_sources(
            {"db": args.db, "jwt_secret_file": args.jwt_secret_file}, environ
        )
    except ConfigError as e:
        raise AdminError(str(e)) from None
    if config.jwt_secret:
        raise AdminError(
            "JWT_SECRET is set: the secret is the operator's; change it and "
            "restart the servers instead"
        )
    now = time.time()
    with context.open_database(args) as db:
        if config.secret_in_database:
            with db.transaction() as txn:
                rotate_secret_txn(txn, args.grace, now)
            where = "the database (server_settings)"
        else:
            try:
                rotate_secret_file(config.jwt_secret_path, args.grace, now)
            except SecretError as e:
                raise AdminError(str(e)) from None
            except FileNotFoundError:
                raise AdminError(
                    f"no JWT secret file {config.jwt_secret_path} (the server "
                    "creates it when it first starts)"
                ) from None
            # Tell the running servers to read the file again.
            with db.transaction() as txn:
                accounts.bump_txn(txn, SECRET_VERSION)
            where = config.jwt_secret_path
    context.emit(
        args,
        {"where": where, "grace_seconds": args.grace},
        [
            f"new JWT secret in {where}; tokens signed with the old one verify "
            f"for {args.grace:g} s more"
        ],
    )


# -- invites ---------------------------------------------------------------------


def run_invite_create(args: argparse.Namespace) -> None:
    code = accounts.new_invite_code()
    now_ms = _now_ms()
    expires_ms = now_ms + round(args.expires * 1000)
    with context.open_database(args) as db, db.transaction() as txn:
        code_id = accounts.create_invite_txn(txn, code, args.uses, expires_ms, now_ms)
    context.emit(
        args,
        {"code": code, "id": code_id, "uses": args.uses, "expires_ms": expires_ms},
        [code],
    )


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def run_invite_list(args: argparse.Namespace) -> None:
    with context.open_database(args) as db, db.transaction() as txn:
        invites = accounts.list_invites_txn(txn)
    now_ms = _now_ms()
    rows = [
        {
            "id": i.code_id,
            "uses_left": i.uses_left,
            "expires": _iso(i.expires_ms),
            "created": _iso(i.created_ms),
            "revoked": i.revoked,
            "usable": not i.revoked
            and i.uses_left > 0
            and (i.expires_ms is None or i.expires_ms > now_ms),
        }
        for i in invites
    ]
    context.emit(
        args,
        {"invites": rows},
        context.table(
            ("ID", "USES LEFT", "EXPIRES", "CREATED", "USABLE"),
            [
                (r["id"], r["uses_left"], r["expires"], r["created"], r["usable"])
                for r in rows
            ],
        ),
    )


def run_invite_revoke(args: argparse.Namespace) -> None:
    with context.open_database(args) as db, db.transaction() as txn:
        found = accounts.revoke_invite_txn(txn, args.code)
    if not found:
        raise AdminError("no invite matches that code or id")
    context.emit(args, {"revoked": True}, ["invite revoked"])
