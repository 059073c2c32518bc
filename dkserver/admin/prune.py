"""``dkserver prune [--dry-run] [--json]``: apply retention now.

Runs the server's own retention pass (dkserver.retention) against the
database the server uses (``--db``, else ``DK_DB``, else ``dkserver.db``),
with the retention settings of the environment (``DK_RETENTION_DAYS`` ...,
docs/operating/retention.md).  Safe while the server runs: small
transactions, the same roll-up, and on PostgreSQL the prune lock (a pass
that finds another node pruning stops and says so).

Exit status: 0 done (or nothing to do); 1 the pass failed part way (what it
deleted stays deleted, and rolled up); 2 nothing was done (bad arguments or
settings, no database, a schema this dkserver does not match).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from dkserver import timestamps

from . import context
from .errors import AdminError

NAME = "prune"

_DESCRIPTION = (
    "Delete what retention keeps no longer: delivered direct messages and "
    "broadcasts after DK_RETENTION_DAYS, pending messages after "
    "DK_PENDING_MAX_DAYS, sessions and message events after "
    "DK_STATS_ROLLUP_DAYS (rolled up into daily aggregates first, so /stats "
    "stays the same). Safe while the server runs."
)

#: What each kind is, for the text output.
_LABELS = {
    "delivered": "delivered direct messages",
    "broadcasts": "broadcasts",
    "broadcast_deliveries": "broadcast deliveries",
    "pending": "pending direct messages (dropped undelivered)",
    "events": "message events",
    "sessions": "sessions",
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME,
        help="delete what retention keeps no longer (--dry-run: count only)",
        description=_DESCRIPTION,
    )
    parser.add_argument(
        "--db",
        metavar="DATABASE",
        default=None,
        help="SQLite file or postgresql:// URL (default: DK_DB, else dkserver.db)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="count what would be deleted; change nothing",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (for scripts)"
    )
    parser.add_argument(
        "--batch",
        type=context.whole_number(),
        default=None,
        metavar="ROWS",
        help="rows per transaction (default: DK_PRUNE_BATCH, else 200)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from twisted.internet import task

    from dkserver.store.errors import StoreError

    outcome: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        try:
            outcome["result"] = await _prune(args, reactor)
        except AdminError as e:
            outcome["error"] = e
        except StoreError as e:
            outcome["failed"] = e

    try:
        task.react(lambda reactor: _deferred(main(reactor)))
    except SystemExit:
        pass
    if "error" in outcome:
        print(f"{NAME}: {outcome['error']}", file=sys.stderr)
        return outcome["error"].exit_code
    if "failed" in outcome:
        print(f"{NAME}: stopped: {outcome['failed']}", file=sys.stderr)
        return 1
    result = outcome.get("result")
    if result is None:
        print(f"{NAME}: stopped unexpectedly", file=sys.stderr)
        return 1
    _print(result, args.json)
    return 0


def _deferred(coro: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)


async def _prune(args: argparse.Namespace, reactor: Any) -> dict[str, Any]:
    from dkserver.config import ConfigError, from_sources
    from dkserver.retention import Policy, Pruner
    from dkserver.store import Store

    try:
        config = from_sources({"db": args.db}, os.environ)
    except ConfigError as e:
        raise AdminError(str(e)) from None
    database = config.database
    if not database.is_postgresql and not (
        database.path and os.path.isfile(database.path)
    ):
        raise AdminError(f"no database file at {database.path}")
    policy = Policy.from_config(config)
    if args.batch is not None:
        policy = Policy(
            policy.retention_days,
            policy.pending_max_days,
            policy.rollup_days,
            args.batch,
        )
    store = Store.create(
        database,
        reactor,
        config.sqlite_synchronous,
        pool_size=2,
        statement_timeout=config.db_statement_timeout,
        connect_timeout=config.db_connect_timeout,
    )
    try:
        try:
            found = await store.schema_version()
        except Exception as e:  # the driver's own, before the store's wrapping
            raise AdminError(
                f"cannot use database {database.redacted}: {' '.join(str(e).split())}"
            ) from None
        if found != store.latest_version:
            raise AdminError(
                f"database {database.redacted} has schema version {found}, this "
                f"dkserver writes {store.latest_version}; start the server once "
                "to migrate it"
            )
        pruner = Pruner(store, policy, clock=reactor)
        now_ns = pruner.time_ns()
        cutoffs = policy.cutoffs(now_ns)
        result: dict[str, Any] = {
            "database": database.redacted,
            "dry_run": bool(args.dry_run),
            "cutoffs": {
                kind: None
                if cutoffs.of(kind) is None
                else timestamps.now(cutoffs.of(kind)).text
                for kind in ("delivered", "broadcasts", "pending", "sessions")
            },
        }
        if args.dry_run:
            result["would_delete"] = await pruner.dry_run()
        else:
            report = await pruner.run_pass()
            result.update(report.as_dict())
        return result
    finally:
        await store.close()


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    cut = result["cutoffs"]
    print(f"database {result['database']}")
    for kind, label in (
        ("delivered", "delivered direct messages delivered"),
        ("broadcasts", "broadcasts sent"),
        ("pending", "pending messages received"),
        ("sessions", "sessions and message events"),
    ):
        when = cut[kind]
        print(f"  {label} before: {when if when else 'kept (off)'}")
    if result["dry_run"]:
        print("dry run: nothing deleted; would delete:")
        for kind, n in result["would_delete"].items():
            print(f"  {n} {_LABELS.get(kind, kind)}")
        return
    deleted = result["deleted"]
    if not deleted:
        print("nothing to delete")
    for table, n in deleted.items():
        print(f"deleted {n} rows of {table}")
    if result["dropped_pending"]:
        print(
            f"  of which {result['dropped_pending']} pending messages dropped "
            "undelivered"
        )
    if result["busy"]:
        print("another node is pruning now; this pass stopped early (run it again)")
