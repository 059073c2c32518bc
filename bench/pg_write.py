"""Message-insert strategies on PostgreSQL, against SQLite, per batch size.

    .venv/bin/python -m bench.pg_write                      # private server
    .venv/bin/python -m bench.pg_write --db postgresql://dk@db:5432/dk
    .venv/bin/python -m bench.pg_write --sizes 1,10,100,500 --messages 4000

The batch shape of dkserver/store/writer.py: each batch of N messages (~300
bytes each) is one transaction that inserts them as ``pending`` and learns
their ids in order.  Strategies:

- ``executemany``: one parameterized INSERT … RETURNING id per row, sent in
  pipeline mode (psycopg's ``executemany(returning=True)``): one round trip
  for the inserts, one each for BEGIN and COMMIT.
- ``pipeline``: the same, with BEGIN and COMMIT in the pipeline too: one
  round trip per batch.
- ``values``: one multi-row ``INSERT … VALUES (…),(…) RETURNING id``
  (a new statement text per batch size).
- ``unnest``: one ``INSERT … SELECT FROM unnest(%s::text[], …)`` with one
  array per column, RETURNING id: the same statement text at every size.
- ``copy``: ids first (``nextval`` over ``generate_series``, one query), then
  ``COPY messages (id, …) FROM STDIN`` with the ids in the rows.

Each runs with ``synchronous_commit`` on (COMMIT waits for the WAL flush)
and off (it does not; a crash can lose the last few hundred ms of commits,
never corrupt).  SQLite runs ``insert_messages_txn`` itself, WAL mode, with
``synchronous`` NORMAL and FULL.  Numbers are wall time per message,
commit included; the private server runs with fsync on.

With ``--db`` everything happens in a scratch schema that is dropped at the
end; nothing else in that database is touched.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import psycopg
from psycopg import sql

from bench.backends import DURABLE_SETTINGS
from dkserver import timestamps
from dkserver.store import pg_schema, schema
from dkserver.store.database import Txn
from dkserver.store.engine import Sqlite3Engine
from dkserver.store.messages import NewMessage, insert_messages_txn
from dkserver.store.url import parse_database_url

COLUMNS = (
    "from_user",
    "to_user",
    "timestamp",
    "content",
    "status",
    "is_broadcast",
    "signature",
    "is_forward_message",
    "received_ns",
)
_NAMES = ", ".join(COLUMNS)
_ROW = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
_ARRAY_TYPES = ("text",) * 5 + ("int4", "text", "int4", "int8")


def batch_count(count: int, size: int) -> int:
    """About ``count`` messages, but 20 to 300 batches: enough commits to
    average over, few enough that a one-message cell with fsync stays short.
    A negative ``count`` is an exact number of batches (for smoke runs)."""
    if count < 0:
        return -count
    return min(max(count // size, 20), 300)


def make_messages(count: int) -> list[NewMessage]:
    """Direct messages of ~300 bytes, as a client sends them."""
    now = time.time_ns()
    out = []
    for i in range(count):
        ns = now + i
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9))
        out.append(
            NewMessage(
                from_user="alice",
                to_user="bob",
                timestamp=f"{ts}.{ns % 10**9:09d}-03:00",
                content=(f"{i:08d}" + "q" * 200)[:200],
                is_broadcast=False,
                signature="s" * 88,
                is_forward_message=False,
                received_ns=ns,
            )
        )
    return out


def rows(msgs: Sequence[NewMessage]) -> list[tuple]:
    return [
        (
            m.from_user,
            m.to_user,
            timestamps.to_storage(m.timestamp),
            m.content,
            "pending",
            int(m.is_broadcast),
            m.signature or "",
            int(m.is_forward_message),
            m.received_ns,
        )
        for m in msgs
    ]


# -- PostgreSQL strategies: each stores one batch in one transaction and ------
# -- returns its ids in row order ----------------------------------------------

_INSERT = f"INSERT INTO messages ({_NAMES}) VALUES {_ROW} RETURNING id"


def pg_executemany(conn: psycopg.Connection, batch: list[tuple]) -> list[int]:
    """executemany pipelines the inserts; BEGIN and COMMIT are round trips
    of their own."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(_INSERT, batch, returning=True)
        return [cur.fetchone()[0] for _ in cur.results()]


def pg_pipeline(conn: psycopg.Connection, batch: list[tuple]) -> list[int]:
    """BEGIN, the inserts and COMMIT all in one pipeline: one round trip."""
    with conn.cursor() as cur:
        with conn.pipeline(), conn.transaction():
            cur.executemany(_INSERT, batch, returning=True)
        return [cur.fetchone()[0] for _ in cur.results()]


def pg_values(conn: psycopg.Connection, batch: list[tuple]) -> list[int]:
    query = (
        f"INSERT INTO messages ({_NAMES}) VALUES "
        + ", ".join([_ROW] * len(batch))
        + " RETURNING id"
    )
    params = [v for row in batch for v in row]
    with conn.transaction():
        rows = conn.execute(query, params, prepare=True).fetchall()
    # identity values are drawn in VALUES order, so sorted ids are row order
    return sorted(r[0] for r in rows)


def pg_unnest(conn: psycopg.Connection, batch: list[tuple]) -> list[int]:
    arrays = [list(column) for column in zip(*batch, strict=True)]
    casts = ", ".join(f"%s::{t}[]" for t in _ARRAY_TYPES)
    query = (
        f"INSERT INTO messages ({_NAMES}) SELECT * FROM unnest({casts}) RETURNING id"
    )
    with conn.transaction():
        rows = conn.execute(query, arrays, prepare=True).fetchall()
    return sorted(r[0] for r in rows)


def pg_copy(conn: psycopg.Connection, batch: list[tuple]) -> list[int]:
    with conn.transaction():
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT nextval(pg_get_serial_sequence('messages', 'id'))"
                " FROM generate_series(1, %s) ORDER BY 1",
                (len(batch),),
                prepare=True,
            )
        ]
        with conn.cursor() as cur:
            with cur.copy(f"COPY messages (id, {_NAMES}) FROM STDIN") as copy:
                for mid, row in zip(ids, batch, strict=True):
                    copy.write_row((mid, *row))
    return ids


STRATEGIES: dict[str, Callable[[psycopg.Connection, list[tuple]], list[int]]] = {
    "executemany": pg_executemany,
    "pipeline": pg_pipeline,
    "values": pg_values,
    "unnest": pg_unnest,
    "copy": pg_copy,
}


def run_pg(
    conninfo: str,
    schema_name: str,
    strategy: str,
    size: int,
    count: int,
    synchronous_commit: str,
) -> tuple[float, float | None]:
    """(wall, CPU) µs per message for ``count`` messages in batches of ``size``.

    CPU is this thread's plus the server backend's (``/proc/PID/schedstat``,
    so only for a server on this machine; else ``None``): unlike wall time it
    barely moves with load from elsewhere on a shared machine.
    """
    insert = STRATEGIES[strategy]
    batches = batch_count(count, size)
    msgs = rows(make_messages(size * (batches + 2)))
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            sql.SQL("SET search_path = {}").format(sql.Identifier(schema_name))
        )
        conn.execute(
            "SELECT set_config('synchronous_commit', %s, false)", (synchronous_commit,)
        )
        conn.commit()
        backend = conn.info.backend_pid
        elapsed = 0.0
        for b in range(batches + 2):  # two warm-up batches, not counted
            if b == 2:
                cpu0 = _cpu_ns(backend), time.thread_time_ns()
            batch = msgs[b * size : (b + 1) * size]
            t0 = time.perf_counter()
            ids = insert(conn, batch)
            t1 = time.perf_counter()
            if len(ids) != size or ids != sorted(ids):
                raise AssertionError(f"{strategy}: ids not one per row in order")
            if b >= 2:
                elapsed += t1 - t0
        cpu1 = _cpu_ns(backend), time.thread_time_ns()
        check = conn.execute(
            "SELECT content FROM messages WHERE id = %s", (ids[-1],)
        ).fetchone()
        if check[0] != batch[-1][3]:
            raise AssertionError(f"{strategy}: the last id names another row")
    n = batches * size
    cpu = None
    if cpu0[0] is not None and cpu1[0] is not None:
        cpu = (cpu1[0] - cpu0[0] + cpu1[1] - cpu0[1]) / n / 1e3
    return elapsed / n * 1e6, cpu


def _cpu_ns(pid: int) -> int | None:
    """CPU time a process has used, ns; ``None`` if it is not visible here."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_sqlite(
    directory: Path, size: int, count: int, synchronous: str
) -> tuple[float, float]:
    """(wall, CPU) µs per message; SQLite's CPU is this thread's."""
    path = directory / f"bench-{uuid.uuid4().hex}.db"
    conn = sqlite3.connect(path, check_same_thread=False)  # as the pool opens it
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        schema.migrate_connection(conn)
        conn.execute(
            "INSERT INTO users (user_id, username, public_key, registered_ns)"
            " VALUES ('alice', 'alice', 'k', 0), ('bob', 'bob', 'k', 0)"
        )
        conn.commit()
        batches = batch_count(count, size)
        msgs = make_messages(size * (batches + 2))
        elapsed = 0.0
        cur = Txn(conn.cursor(), Sqlite3Engine())
        for b in range(batches + 2):
            if b == 2:
                cpu0 = time.thread_time_ns()
            batch = msgs[b * size : (b + 1) * size]
            t0 = time.perf_counter()
            ids = insert_messages_txn(cur, batch)
            conn.commit()
            t1 = time.perf_counter()
            assert len(ids) == size
            if b >= 2:
                elapsed += t1 - t0
        cpu = time.thread_time_ns() - cpu0
    finally:
        conn.close()
    n = batches * size
    return elapsed / n * 1e6, cpu / n / 1e3


def prepare_schema(conninfo: str, name: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(name)))
        pg_schema.migrate_connection(conn)
        conn.execute(
            "INSERT INTO users (user_id, username, public_key, registered_ns)"
            " VALUES ('alice', 'alice', 'k', 0), ('bob', 'bob', 'k', 0)"
        )


def drop_schema(conninfo: str, name: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pg_write")
    parser.add_argument("--db", help="postgresql:// URL (default: a private server)")
    parser.add_argument("--sizes", default="1,10,100,500")
    parser.add_argument(
        "--messages",
        type=int,
        default=4000,
        help="messages per cell (20 to 300 batches)",
    )
    parser.add_argument(
        "--batches", type=int, help="exactly this many batches per cell instead"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; median")
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="comma-separated"
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        strategies = args.strategies.split(",")
        if any(s < 1 for s in sizes) or not set(strategies) <= set(STRATEGIES):
            raise ValueError
        if args.batches is not None and args.batches < 1:
            raise ValueError
    except ValueError:
        print(
            "pg_write: --sizes and --batches take positive integers,"
            " --strategies some of " + ",".join(STRATEGIES),
            file=sys.stderr,
        )
        return 2

    private = None
    if args.db:
        try:
            url = parse_database_url(args.db)
        except ValueError as e:
            print(f"pg_write: --db {e}", file=sys.stderr)
            return 2
        if not url.is_postgresql:
            print("pg_write: --db must be a postgresql:// URL", file=sys.stderr)
            return 2
        conninfo = url.conninfo
    else:
        from tests.support.postgres import PrivateServer, find_bindir

        bindir = find_bindir()
        if bindir is None:
            print("pg_write: no PostgreSQL binaries; pass --db", file=sys.stderr)
            return 2
        private = PrivateServer(bindir, settings=DURABLE_SETTINGS)
        server = private.start()
        conninfo = parse_database_url(server.url("postgres")).conninfo

    count = -args.batches if args.batches is not None else args.messages
    scratch = f"dk_bench_{uuid.uuid4().hex[:8]}"
    # Every cell is measured once per round, all cells in each round, and
    # the median round is reported: a burst of load from elsewhere on the
    # machine then hits every strategy alike instead of one.
    cells: list[tuple[str, int, Callable[[], float]]] = []
    tmp = tempfile.TemporaryDirectory(prefix="dk-bench-")
    for sync in ("on", "off"):
        for strategy in strategies:
            for size in sizes:
                cells.append(
                    (
                        f"pg {strategy} sc={sync}",
                        size,
                        partial(run_pg, conninfo, scratch, strategy, size, count, sync),
                    )
                )
    for synchronous in ("FULL", "NORMAL"):
        for size in sizes:
            cells.append(
                (
                    f"sqlite sync={synchronous}",
                    size,
                    partial(run_sqlite, Path(tmp.name), size, count, synchronous),
                )
            )
    runs: dict[tuple[str, int], list[tuple[float, float | None]]] = {
        (k, n): [] for k, n, _ in cells
    }
    try:
        prepare_schema(conninfo, scratch)
        for round_no in range(args.repeat):
            for key, size, run in cells:
                wall, cpu = run()
                runs[key, size].append((wall, cpu))
                shown = "-" if cpu is None else f"{cpu:.1f}"
                print(
                    f"round {round_no + 1}: {key:24} {size:4}: {wall:9.1f} µs/msg"
                    f" wall, {shown} µs/msg CPU",
                    flush=True,
                )
        wall_us: dict[str, dict[int, float]] = {}
        cpu_us: dict[str, dict[int, float | None]] = {}
        for (key, size), values in runs.items():
            wall_us.setdefault(key, {})[size] = statistics.median(v[0] for v in values)
            cpus = [v[1] for v in values if v[1] is not None]
            cpu_us.setdefault(key, {})[size] = statistics.median(cpus) if cpus else None
    finally:
        try:
            drop_schema(conninfo, scratch)
        finally:
            tmp.cleanup()
            if private is not None:
                private.stop()

    for title, table in (("wall", wall_us), ("CPU (client + backend)", cpu_us)):
        print()
        print(
            f"| µs per message, {title} | {' | '.join(f'batch {s}' for s in sizes)} |"
        )
        print(f"|---|{'---:|' * len(sizes)}")
        for key, cells_ in table.items():
            shown = ["-" if cells_[s] is None else f"{cells_[s]:.1f}" for s in sizes]
            print(f"| {key} | {' | '.join(shown)} |")
    meta = {"server": "private" if private else "given", "rounds": args.repeat}
    result = {"wall_us": wall_us, "cpu_us": cpu_us}
    print("BENCH_JSON " + json.dumps({"pg_write": result, "meta": meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
