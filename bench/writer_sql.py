"""What the group writer's transaction costs per message on SQLite, and which
part of it costs what.

    .venv/bin/python -m bench.writer_sql
    .venv/bin/python -m bench.writer_sql --messages 40000 --sessions 20 --rounds 5

Runs dkserver's own ``_commit_txn`` (dkserver.store.writer) on one thread,
no reactor, over a real database file with dkserver's schema and pragmas:
batches of ``--batch`` direct messages from ``--sessions`` connections to as
many recipients, each batch also marking the previous one delivered, as the
relay bench's traffic does. Variants, alternated over ``--rounds`` rounds
in one process (each on a fresh file):

- ``all``: what the server writes (messages, analytics rows, delivery marks);
- ``no events``: without the ``message_events`` rows;
- ``no marks``: without the delivery marks.

Prints µs of wall time and of process CPU per message (medians). The
difference between the variants is what each part costs; ``bench relay``
measures the server as a whole, where this work also competes with the
reactor thread for the GIL.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
import uuid

from dkserver import timestamps
from dkserver.store import schema
from dkserver.store import writer as writer_module
from dkserver.store.database import Txn
from dkserver.store.engine import Sqlite3Engine
from dkserver.store.messages import NewMessage
from dkserver.store.pool import configure_sqlite

VARIANTS = {
    "all": {"events": True, "marks": True},
    "no events": {"events": False, "marks": True},
    "no marks": {"events": True, "marks": False},
}


def run_variant(
    directory: str, name: str, messages: int, batch: int, sessions: int
) -> tuple[float, float]:
    """(wall µs, CPU µs) per message of one variant on a fresh file."""
    want = VARIANTS[name]
    path = os.path.join(directory, f"{name.replace(' ', '-')}-{uuid.uuid4().hex}.db")
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level="")
    try:
        configure_sqlite(conn)
        schema.migrate_connection(conn)
        users = [f"user{i:05d}" for i in range(sessions)]
        conn.executemany(
            "INSERT INTO users (user_id, username, public_key, registered_ns)"
            " VALUES (?, ?, ?, 0)",
            [(u, u, "k" * 44) for u in users],
        )
        session_of = {u: str(uuid.uuid4()) for u in users}
        conn.executemany(
            "INSERT INTO sessions (session_id, user_id, start_time) VALUES (?, ?, ?)",
            [(s, u, "2026-12-06 00:00:00+00:00") for u, s in session_of.items()],
        )
        conn.commit()
        engine = Sqlite3Engine()
        known = set(users)
        stamp = timestamps.now(time.time_ns()).text
        content, signature = "x" * 128, "S" * 88
        delivered: list = []
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for start in range(0, messages, batch):
            b = writer_module._Batch()
            for n in range(start, start + batch):
                sender = users[n % sessions]
                m = NewMessage(
                    sender,
                    users[(n + 1) % sessions],
                    stamp,
                    content,
                    False,
                    signature,
                    False,
                    time.time_ns(),
                )
                b.messages.append((m, session_of[sender] if want["events"] else None))
                b.waiters.append(None)
            if want["marks"]:
                b.delivered, delivered = delivered, []
            result = writer_module._commit_txn(
                Txn(conn.cursor(), engine), b, known, None, time.time_ns()
            )
            conn.commit()
            delivered = list(result.ids)
        done = -(-messages // batch) * batch
        wall = (time.perf_counter() - wall0) * 1e6 / done
        cpu = (time.process_time() - cpu0) * 1e6 / done
        (stored,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
        if stored != done:
            raise SystemExit(f"{name}: {stored} messages stored, {done} expected")
        return wall, cpu
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.writer_sql", description=__doc__.split("\n")[0]
    )
    p.add_argument("--messages", type=int, default=40_000, help="per variant run")
    p.add_argument("--batch", type=int, default=64, help="messages per commit")
    p.add_argument("--sessions", type=int, default=400, help="senders (sessions)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    for flag in ("messages", "batch", "sessions", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="dk-writer-sql-") as directory:
        for rnd in range(args.rounds):
            order = list(VARIANTS) if rnd % 2 == 0 else list(VARIANTS)[::-1]
            for name in order:
                results[name].append(
                    run_variant(
                        directory, name, args.messages, args.batch, args.sessions
                    )
                )
    print(f"{'variant':<10} {'wall µs/msg':>12} {'cpu µs/msg':>11}")
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:<10} {wall:>12.1f} {cpu:>11.1f}")
    print(
        f"(batch {args.batch}, {args.sessions} sessions, {args.messages} messages"
        f" per run, medians of {args.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
