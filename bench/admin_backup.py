"""How much each way of copying a live SQLite file stalls the server's writes.

    .venv/bin/python -m bench.admin_backup                     # 200 MB, 200 commits/s
    .venv/bin/python -m bench.admin_backup --mb 50 --rate 500 --method vacuum_into

A file of ``--mb`` MB (users and ~1 KiB direct messages, dkserver's schema)
is written to by a separate process the way dkserver's group writer writes:
one transaction per commit through ``insert_messages_txn``, on a connection
set up by ``configure_sqlite`` (WAL, synchronous NORMAL, busy timeout), at
``--rate`` commits per second.  That process records the latency of every
commit.  Meanwhile this process copies the file, once per method:

- ``idle``: no copy (the baseline, ``--idle`` seconds);
- ``vacuum_into``: ``VACUUM INTO 'copy'`` (one read transaction, rebuilds
  every table and index into the copy);
- ``backup_all``: ``Connection.backup(copy)`` in one step (``pages=-1``);
- ``backup_steps``: ``Connection.backup(copy, pages=N, sleep=S)`` inside a
  read transaction held on the source connection, so every step reads the
  same snapshot (without it, each write of another process restarts the
  copy from the first page: ``backup_steps_unpinned`` shows that, and is
  stopped after ``--max-steps`` steps).

Each copy is fsynced before it counts as done.  Per method, over
``--repeat`` rounds (the order rotates each round): the copy's median wall
time, the commits and their latency (p50, p99, max) while copies ran, and
the WAL's largest size at the end of one.  One line
``BENCH_JSON {...}`` carries every number.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dkserver.store import schema
from dkserver.store.database import Txn
from dkserver.store.engine import Sqlite3Engine
from dkserver.store.messages import NewMessage, insert_messages_txn
from dkserver.store.pool import configure_sqlite

METHODS = (
    "idle",
    "vacuum_into",
    "backup_all",
    "backup_steps",
    "backup_steps_unpinned",
)

CONTENT = "x" * 1000


def _message(i: int) -> NewMessage:
    return NewMessage(
        f"u{i % 100}",
        f"u{(i + 1) % 100}",
        "2026-01-01T00:00:00Z",
        CONTENT,
        False,
        "sig" * 20,
        False,
        time.time_ns(),
    )


def build(path: Path, mb: int) -> int:
    """A dkserver file of about ``mb`` MB; returns its message count."""
    conn = sqlite3.connect(path)
    schema.migrate_connection(conn)
    configure_sqlite(conn)
    txn = Txn(conn.cursor(), Sqlite3Engine())
    txn.executemany(
        "INSERT INTO users (user_id, username, public_key, registered_ns)"
        " VALUES (?, ?, ?, 1)",
        [(f"u{i}", f"user {i}", "k" * 44) for i in range(100)],
    )
    count = 0
    while path.stat().st_size < mb * 1_000_000:
        insert_messages_txn(txn, [_message(count + i) for i in range(5000)])
        conn.commit()
        count += 5000
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return count


def writer(path: str, rate: float, out: str) -> None:
    """The child: commit one message every 1/rate s until stdin closes;
    write ``start_monotonic latency_s`` lines to ``out``."""
    import selectors

    conn = sqlite3.connect(path)
    configure_sqlite(conn)
    txn = Txn(conn.cursor(), Sqlite3Engine())
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    interval = 1.0 / rate
    samples = []
    next_at = time.monotonic()
    i = 0
    while True:
        wait = next_at - time.monotonic()
        if sel.select(timeout=max(0.0, wait)):
            break  # stdin closed: stop
        start = time.monotonic()
        insert_messages_txn(txn, [_message(i)])
        conn.commit()
        samples.append((start, time.monotonic() - start))
        i += 1
        next_at = max(next_at + interval, time.monotonic() - 1.0)
    with open(out, "w") as f:
        f.writelines(f"{s:.6f} {lat:.6f}\n" for s, lat in samples)


def copy(method: str, src_path: Path, dest: Path, args) -> dict:
    """Run one method; returns its figures (wall time, steps, restarts)."""
    if method == "idle":
        time.sleep(args.idle)
        return {}
    src = sqlite3.connect(src_path, isolation_level=None)
    configure_sqlite(src)
    figures: dict = {}
    try:
        if method == "vacuum_into":
            src.execute("VACUUM INTO ?", (str(dest),))
            return figures
        target = sqlite3.connect(dest)
        steps: list[int] = []

        def progress(status: int, remaining: int, total: int) -> None:
            steps.append(remaining)
            if len(steps) >= args.max_steps:
                raise RuntimeError("gave up")

        pinned = method in ("backup_all", "backup_steps")
        if pinned:
            src.execute("BEGIN")
            src.execute("SELECT COUNT(*) FROM messages").fetchone()
        pages = -1 if method == "backup_all" else args.pages
        sleep = 0 if method == "backup_all" else args.sleep
        try:
            src.backup(target, pages=pages, sleep=sleep, progress=progress)
            figures["completed"] = True
        except RuntimeError:
            figures["completed"] = False
        finally:
            if pinned:
                src.execute("COMMIT")
            target.close()
        figures["steps"] = len(steps)
        figures["restarts"] = sum(1 for a, b in itertools.pairwise(steps) if b > a)
        return figures
    finally:
        src.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.admin_backup")
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--pages", type=int, default=256)
    parser.add_argument("--sleep", type=float, default=0.005)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--method", action="append", choices=METHODS)
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds (the order rotates)"
    )
    parser.add_argument("--dir", default=None, help="work directory (default: temp)")
    args = parser.parse_args(argv)
    methods = args.method or list(METHODS)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        src = work / "dk.db"
        t0 = time.monotonic()
        messages = build(src, args.mb)
        size = src.stat().st_size
        print(
            f"built {size / 1e6:.0f} MB, {messages} messages in "
            f"{time.monotonic() - t0:.1f} s",
            flush=True,
        )
        samples_path = work / "samples.txt"
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.admin_backup",
                "--writer",
                str(src),
                str(args.rate),
                str(samples_path),
            ],
            stdin=subprocess.PIPE,
        )
        try:
            time.sleep(1.0)  # let the writer settle
            windows = []
            for round_ in range(args.repeat):
                shift = round_ % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    dest = work / f"copy-{method}.db"
                    start = time.monotonic()
                    figures = copy(method, src, dest, args)
                    if dest.exists():
                        _fsync(dest)  # a backup is only done once it is on disk
                    end = time.monotonic()
                    wal = Path(f"{src}-wal")
                    figures["wal_mb"] = round(wal.stat().st_size / 1e6, 1)
                    windows.append((method, start, end, figures))
                    if dest.exists():
                        dest.unlink()
                    time.sleep(1.0)  # let the writer recover between methods
        finally:
            child.stdin.close()
            child.wait(timeout=60)
        samples = [
            tuple(map(float, line.split()))
            for line in samples_path.read_text().split("\n")
            if line
        ]
    results = {}
    header = (
        f"{'method':<22} {'copy s':>7} {'commits':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'WAL MB':>7}  notes"
    )
    print(header)
    for method in methods:
        runs = [w for w in windows if w[0] == method]
        lat = [
            lat for _, start, end, _ in runs for s, lat in samples if start <= s <= end
        ]
        notes: dict = {}
        for _, _, _, figures in runs:
            for key in ("steps", "restarts"):
                if key in figures:
                    notes[key] = max(notes.get(key, 0), figures[key])
            if "completed" in figures:
                notes["completed"] = (
                    notes.get("completed", True) and figures["completed"]
                )
        row = {
            "runs": len(runs),
            "copy_s": round(statistics.median(e - s for _, s, e, _ in runs), 2),
            "commits": len(lat),
            "p50_ms": round(1000 * percentile(lat, 0.5), 2),
            "p99_ms": round(1000 * percentile(lat, 0.99), 2),
            "max_ms": round(1000 * max(lat, default=float("nan")), 2),
            "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
            "wal_mb": max(f["wal_mb"] for *_, f in runs),
            **notes,
        }
        results[method] = row
        print(
            f"{method:<22} {row['copy_s']:>7} {row['commits']:>8} {row['p50_ms']:>7} "
            f"{row['p99_ms']:>7} {row['max_ms']:>7} {row['wal_mb']:>7}  "
            + ", ".join(f"{k}={v}" for k, v in notes.items())
        )
    meta = {
        "mb": args.mb,
        "size_bytes": size,
        "rate": args.rate,
        "pages": args.pages,
        "sleep": args.sleep,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
    }
    print("BENCH_JSON " + json.dumps({"meta": meta, "results": results}))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--writer"]:
        writer(sys.argv[2], float(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    sys.exit(main())
