"""``python -m bench retention``: relay latency while the server prunes.

    .venv/bin/python -m bench retention                  # 1,000,000 rows, ~2 min
    .venv/bin/python -m bench retention --rows 200000 --rate 1000 --seconds 5
    .venv/bin/python -m bench retention --smoke          # tiny sizes (CI)
    .venv/bin/python -m bench retention --db postgresql  # a private PostgreSQL

One dkserver on a fresh SQLite file (or PostgreSQL schema) that already
holds ``rows`` direct messages delivered 40 days ago (written straight into
the database before the server starts, with schema v7's ``delivered_ns``),
so its retention timer
(``DK_PRUNE_INTERVAL=--prune-after``; default retention of 30 days,
``DK_PRUNE_BATCH`` 200) has all of them to delete in its first pass.  In the
same run, on the same server:

1. ``without``: a paced relay (``pairs`` sender->receiver pairs, ``rate``
   messages/s in all, ``seconds`` long) before the first pass starts;
2. ``while pruning``: the same relay again, started as soon as
   ``dkserver_pruned_rows_total`` shows the pass deleting; the run records
   how many rows the pass deleted during the relay (it must overlap).

Printed: p50/p99/max of both and the ratio of the p99s, the pass's rows per
second, and one ``BENCH_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sqlite3
import ssl
import sys
import tempfile
import time
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench import scenarios
from bench.procs import kill_all, raise_nofile
from bench.runner import _table, dkserver_proc, dkserver_version
from bench.scenarios import Bench, log
from dkserver.store import schema

DAY_NS = 86_400 * 10**9

PASS_LINE = re.compile(
    r"retention pass: deleted (\d+) rows in (\d+) batches \(([\d.]+) s\)"
)


def fill(path: str, rows: int) -> None:
    """``rows`` direct messages delivered 40 days ago, as dkserver writes them."""
    conn = sqlite3.connect(path)
    schema.migrate_connection(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    old = time.time_ns() - 40 * DAY_NS
    conn.executemany(
        "INSERT INTO users (user_id, username, public_key, registered_ns)"
        " VALUES (?, ?, ?, ?)",
        [(f"old{i}", f"old{i}", f"key{i:040d}", old) for i in range(10)],
    )
    chunk = 100_000
    for start in range(0, rows, chunk):
        conn.executemany(
            "INSERT INTO messages (from_user, to_user, timestamp, content, status,"
            " is_broadcast, signature, received_ns, delivered_ns)"
            " VALUES (?, ?, ?, ?, 'delivered', 0, ?, ?, ?)",
            (
                (
                    f"old{i % 10}",
                    f"old{(i + 1) % 10}",
                    "2026-10-23 12:00:00.000000000+00:00",
                    "c" * 128,
                    f"sig{i}",
                    old + i,
                    old + i + 1000,
                )
                for i in range(start, min(rows, start + chunk))
            ),
        )
        conn.commit()
    conn.close()


def fill_pg(url: str, rows: int) -> None:
    """The same rows in a PostgreSQL schema (COPY)."""
    import psycopg

    from dkserver.store import pg_schema
    from dkserver.store.url import parse_database_url

    old = time.time_ns() - 40 * DAY_NS
    with psycopg.connect(parse_database_url(url).conninfo, autocommit=True) as conn:
        pg_schema.migrate_connection(conn)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO users (user_id, username, public_key, registered_ns)"
                " VALUES (%s, %s, %s, %s)",
                [(f"old{i}", f"old{i}", f"key{i:040d}", old) for i in range(10)],
            )
            with cur.copy(
                "COPY messages (from_user, to_user, timestamp, content, status,"
                " is_broadcast, signature, received_ns, delivered_ns) FROM STDIN"
            ) as copy:
                for i in range(rows):
                    copy.write_row(
                        (
                            f"old{i % 10}",
                            f"old{(i + 1) % 10}",
                            "2026-10-23 12:00:00.000000000+00:00",
                            "c" * 128,
                            "delivered",
                            0,
                            f"sig{i}",
                            old + i,
                            old + i + 1000,
                        )
                    )
            pg_schema.reset_sequences(conn)
            cur.execute("ANALYZE")


def pruned(port: int, cafile: str) -> float:
    """``dkserver_pruned_rows_total{table="messages"}`` of the server."""
    ctx = ssl.create_default_context(cafile=cafile)
    with urllib.request.urlopen(
        f"https://localhost:{port}/metrics", context=ctx, timeout=10
    ) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "dkserver_pruned_rows_total" and s.labels == {
                "table": "messages"
            }:
                return s.value
    return 0.0


async def run(args) -> dict:
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="dkbench-retention-")
    env = {
        "DK_PRUNE_INTERVAL": str(args.prune_after),
        "DK_PRUNE_BATCH": str(args.batch),
    }
    pg = None
    t = time.monotonic()
    if args.db == "postgresql":
        from bench.backends import PostgresBackend

        pg = PostgresBackend()
        pg.start()
        db, pg_env = pg.open(tmp)
        env.update(pg_env)
        log(f"filling a PostgreSQL schema with {args.rows} delivered messages")
        fill_pg(db, args.rows)
    else:
        db = os.path.join(tmp, "dk.db")
        log(f"filling {db} with {args.rows} delivered messages 40 days old")
        fill(db, args.rows)
    fill_s = time.monotonic() - t
    dk = dkserver_proc(tmp, db, env)
    b = Bench(tmp=tmp, cafile=os.path.join(tmp, "c.pem"), dk=dk, procs=args.procs)
    per_pair = max(2, int(args.rate * args.seconds / args.pairs))
    out: dict = {
        "meta": {
            "command": " ".join(["python -m bench retention", *sys.argv[2:]]),
            "dkserver_commit": dkserver_version(),
            "db": args.db,
            "cpus": os.cpu_count(),
            "rows": args.rows,
            "batch": args.batch,
            "pairs": args.pairs,
            "rate": args.rate,
            "seconds": args.seconds,
            "fill_s": round(fill_s, 1),
        }
    }
    started = time.monotonic()
    try:
        await dk.start()
        started = time.monotonic()
        port = dk.port

        async def count() -> float:
            return await asyncio.to_thread(pruned, port, b.cafile)

        log(f"relay without pruning: {args.pairs} pairs at {args.rate}/s")
        out["without"] = await scenarios.relay(
            b, "dk", args.pairs, per_pair, rate=args.rate
        )
        if await count() > 0:
            raise RuntimeError(
                "the prune pass began during the first relay; raise --prune-after"
            )
        log("waiting for the first prune pass")
        while await count() == 0:
            if time.monotonic() - started > args.prune_after + 60:
                raise RuntimeError("no prune pass started")
            await asyncio.sleep(0.05)
        pass_started = time.monotonic()
        before = await count()
        log("relay while pruning")
        out["while_pruning"] = await scenarios.relay(
            b, "dk", args.pairs, per_pair, rate=args.rate
        )
        during = await count() - before
        still_running = await count() < args.rows
        while await count() < args.rows:
            if not dk.alive():
                raise RuntimeError(f"dkserver died: {dk.tail()}")
            await asyncio.sleep(0.1)
        wait_s = time.monotonic() - pass_started
        # the server's own account of the pass (its log line)
        done = None
        for _ in range(50):
            with open(dk.log, errors="replace") as f:
                done = PASS_LINE.search(f.read())
            if done:
                break
            await asyncio.sleep(0.1)
        pass_s = float(done.group(3)) if done else wait_s
        out["prune"] = {
            "rows": args.rows,
            "deleted_during_relay": int(during),
            "pass_outlasted_relay": still_running,
            "pass_s": round(pass_s, 2),
            "batches": int(done.group(2)) if done else None,
            "rows_per_s": round(int(done.group(1)) / pass_s) if done else None,
        }
        p0 = out["without"]["p99_ms"]
        p1 = out["while_pruning"]["p99_ms"]
        out["p99_ratio"] = round(p1 / p0, 2) if p0 and p1 else None
    finally:
        await dk.stop()
        kill_all()
        if pg is not None:
            pg.close()
            pg.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def render(r: dict) -> str:
    rows = [
        [
            name,
            r[key]["delivered"],
            r[key]["msgs_per_s"],
            r[key]["p50_ms"],
            r[key]["p99_ms"],
            r[key]["max_ms"],
            r[key]["server_cpu_us_per_msg"],
        ]
        for name, key in (
            ("without pruning", "without"),
            ("while pruning", "while_pruning"),
        )
    ]
    lines = _table(
        f"relay on {r['meta']['db']}, {r['meta']['pairs']} pairs paced at "
        f"{r['meta']['rate']}/s",
        ["run", "delivered", "msg/s", "p50 ms", "p99 ms", "max ms", "srv µs/msg"],
        rows,
    )
    p = r["prune"]
    lines += [
        "",
        f"p99 while pruning / without: {r['p99_ratio']}",
        f"prune pass: {p['rows']} rows in {p['pass_s']} s "
        f"({p['rows_per_s']} rows/s, {p['batches']} batches of "
        f"{r['meta']['batch']}); {p['deleted_during_relay']} deleted during the "
        f"relay; pass outlasted the relay: {p['pass_outlasted_relay']}",
    ]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench retention")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument(
        "--db",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="postgresql: a private server (durable settings), as bench --db",
    )
    p.add_argument("--batch", type=int, default=200, help="DK_PRUNE_BATCH")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--rate", type=float, default=2000.0, help="messages/s in all")
    p.add_argument("--seconds", type=float, default=8.0, help="each relay's length")
    p.add_argument(
        "--prune-after",
        type=float,
        default=40.0,
        help="DK_PRUNE_INTERVAL: the first pass starts this long after start",
    )
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--smoke", action="store_true", help="tiny sizes")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.rate, args.seconds, args.pairs = 20_000, 200.0, 1.0, 2
        args.prune_after = min(args.prune_after, 15.0)
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[2:] if argv is None else argv)
    result = asyncio.run(run(args))
    print(render(result))
    print("BENCH_JSON " + orjson.dumps(result).decode())
    return 0
