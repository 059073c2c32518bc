"""``dkserver stats``: the usage figures ``GET /stats`` reports, from the database.

The numbers come from the store's own query (`AnalyticsStore.stats`), the
one ``/stats`` runs, so both always agree.  What ``/stats`` adds from a
running process's memory (``node``, ``live`` connections and online users)
has no meaning for a command beside the server and is left out.  Only
reads: on SQLite they take no lock the server's writer waits for.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from . import context

NAME = "stats"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``stats`` to the ``dkserver`` command."""
    parser = subparsers.add_parser(
        NAME,
        help="usage statistics (what GET /stats reports) from the database",
        description="Print active users, message and session counts and the "
        "peak hour, computed as GET /stats computes them (the same query). "
        "The live figures /stats takes from a running server's memory "
        "(node, live) are not included.",
    )
    context.add_common_options(parser)
    parser.set_defaults(run=context.command(NAME, run))


def run(args: argparse.Namespace) -> None:
    with context.open_database(args) as db:
        stats = db.run(db.store.analytics.stats(time.time_ns()))
    context.emit(args, stats, lines(stats))


def lines(stats: dict[str, Any]) -> list[str]:
    messages, sessions = stats["messages"], stats["sessions"]
    peak = stats["peak_hour"]
    rows = [
        ("daily active users", stats["daily_active_users"]),
        ("weekly active users", stats["weekly_active_users"]),
    ]
    for window, label in (("all_time", "all time"), ("last_24h", "last 24 h")):
        counts = messages[window]
        rows.append(
            (
                f"messages, {label}",
                f"{counts['total']} ({counts['direct']} direct, "
                f"{counts['broadcast']} broadcast)",
            )
        )
    rows += [
        ("sessions", f"{sessions['count']} ({sessions['open']} open)"),
        ("session duration, mean", _seconds(sessions["avg_duration_s"])),
        ("session duration, median", _seconds(sessions["p50_duration_s"])),
        ("session duration, longest", _seconds(sessions["max_duration_s"])),
        ("peak hour (UTC)", "-" if peak is None else f"{peak:02d}:00-{peak:02d}:59"),
    ]
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows]


def _seconds(value: float | int | None) -> str:
    return "-" if value is None else f"{value:g} s"
