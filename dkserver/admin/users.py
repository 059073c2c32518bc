"""``dkserver user show USER`` and ``dkserver user list``: read registered users.

Both only read, through the store's own queries (`UserStore.get`, ``page``
and ``activity``), so they run beside a serving server without holding its
write lock.  ``list`` pages by user id (``--after`` the last id printed),
so a script walks any number of users in bounded steps.
"""

from __future__ import annotations

import argparse

from dkserver import timestamps
from dkserver.store.users import User

from . import context
from .errors import AdminError

#: ``user list`` without ``--limit``.
DEFAULT_LIMIT = 100
#: The most one page may ask for (one transaction, one result in memory).
MAX_LIMIT = 10_000

GROUP_HELP = "show and manage registered users"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``user show`` and ``user list`` to the ``dkserver`` command."""
    users = context.command_group(subparsers, "user", GROUP_HELP)

    show = users.add_parser(
        "show",
        help="one user's record and activity",
        description="Print a user's id, name, public key, registration time, "
        "pending direct messages and sessions. Exit 2 if there is no such user.",
    )
    show.add_argument("user_id", metavar="USER", help="the user id")
    context.add_common_options(show)
    show.set_defaults(run=context.command("user show", run_show))

    listing = users.add_parser(
        "list",
        help="registered users, a page at a time, by user id",
        description="Print registered users in user id order. For the next "
        "page pass the last id printed as --after; with --json, the document's "
        '"next_after" (null on the last page).',
    )
    listing.add_argument(
        "--limit",
        type=context.whole_number(1, MAX_LIMIT),
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N users (1-{MAX_LIMIT}, default {DEFAULT_LIMIT})",
    )
    listing.add_argument(
        "--after",
        metavar="ID",
        default=None,
        help="start after this user id (the last one of the previous page)",
    )
    context.add_common_options(listing)
    listing.set_defaults(run=context.command("user list", run_list))


def _registered(user: User) -> str | None:
    """The registration instant as RFC 3339 UTC (None: unknown, legacy row)."""
    if not user.registered_ns:
        return None
    return timestamps.from_unix_nanos(user.registered_ns).text


def _record(user: User) -> dict:
    return {
        "user_id": user.user_id,
        "username": user.username,
        "public_key": user.public_key,
        "registered": _registered(user),
    }


def run_show(args: argparse.Namespace) -> None:
    with context.open_database(args) as db:
        user = db.run(db.store.users.get(args.user_id))
        if user is None:
            raise AdminError(f"no user {args.user_id!r}")
        activity = db.run(db.store.users.activity(user.user_id))
    document = {
        **_record(user),
        "pending_direct_messages": activity.pending_direct,
        "sessions": activity.sessions,
        "open_sessions": activity.open_sessions,
        "last_session_start": (
            None
            if activity.last_session_start is None
            else timestamps.stored_to_rfc3339(activity.last_session_start)
        ),
    }
    width = max(len(key) for key in document)
    context.emit(
        args,
        document,
        [
            f"{key.replace('_', ' '):<{width}}  {'-' if value is None else value}"
            for key, value in document.items()
        ],
    )


def run_list(args: argparse.Namespace) -> None:
    with context.open_database(args) as db:
        users = db.run(db.store.users.page(args.after, args.limit))
    next_after = users[-1].user_id if len(users) == args.limit else None
    lines = context.table(
        ("USER", "NAME", "REGISTERED"),
        [(u.user_id, u.username, _registered(u)) for u in users],
    )
    if next_after is not None:
        lines.append(f"(more: --after {next_after})")
    context.emit(
        args,
        {"users": [_record(u) for u in users], "next_after": next_after},
        lines,
    )
