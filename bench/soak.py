"""``python -m bench soak --minutes N``: a steady mixed load on one dkserver
for N minutes, sampled every ``--interval`` seconds, with a trend test on
the server's memory and file descriptors.

    .venv/bin/python -m bench soak --minutes 30
    .venv/bin/python -m bench soak --minutes 3 --db postgresql
    .venv/bin/python -m bench soak --minutes 30 --server-env DK_SOME_SETTING=1

One ``twistd -n dkserver`` (bench/runner.py's, rate limits lifted) on a fresh
database (``--db``: bench/backends.py), ``--users`` registered users dealt
over ``--procs`` load generators (bench/soakload.py: steady users, churners
that log in, connect, leave and come back, direct messages to online and
offline users, broadcasts, REST reads).  The load is fixed (not closed
loop), well below saturation.  ``--server-env KEY=VALUE`` passes settings to
the server, e.g. short retention so that pruning runs during the soak.

Every interval: the server's RSS (``VmRSS``), open fds (``/proc/PID/fd``),
threads and CPU; its WebSocket connections (``/metrics``); the pending
backlog and table sizes through a read-only connection of our own; the
interval's relay p50/p99 (direct messages to steady users), broadcast p99
and REST p99, and the load's counts.  The series goes to ``--out``.csv (a
row per sample, written as it is taken) and ``--out``.json (with the
summary); the summary is printed, then one ``BENCH_JSON {...}`` line.

Trend test (bench/trend.py): least-squares slope of RSS and fds over the
second half of the run with a one-sided 95 % bound; "flat" when the slope
is not significantly above zero or significantly below the stated bound
(``--rss-bound``, ``--fd-bound`` per hour).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from pathlib import Path
from urllib.parse import quote

import orjson

from bench import trend, wire
from bench.backends import Backend, BackendError, PostgresBackend, parse_backends
from bench.procs import kill_all, raise_nofile, rss_kib, start_all, stop_all
from bench.runner import ROOT, _table, dkserver_proc, dkserver_version
from bench.scenarios import Bench, log, pct, split
from bench.soakload import COUNTERS

#: The admin user (``DK_ADMIN_USERS``): its token reads ``/stats``.
PREFIX = "soak"
ADMIN = f"{PREFIX}0"

DEFAULTS = {
    "users": 200,
    "procs": 2,
    "dm_rate": 250.0,
    "bc_rate": 0.5,
    "rest_rate": 10.0,
    "stats_every": 30.0,
    "steady_share": 0.5,
    "offline_share": 0.2,
    "churner_share": 0.2,
    "online_s": (5.0, 30.0),
    "offline_s": (2.0, 10.0),
    "abort_share": 0.3,
    "pad_bytes": 100,
}

#: The CSV's columns, in order.
FIELDS = [
    "t_s",
    "rss_kib",
    "rss_anon_kib",
    "rss_file_kib",
    "fds",
    "threads",
    "server_cpu_pct",
    "db_cpu_pct",
    "ws_connections",
    "online",
    "pending_direct",
    "messages_rows",
    "broadcast_deliveries_rows",
    "sessions_rows",
    "message_events_rows",
    "db_bytes",
    "dm_sent",
    "dm_to_offline",
    "dm_received",
    "dm_p50_ms",
    "dm_p99_ms",
    "dm_max_ms",
    "bc_sent",
    "bc_received",
    "bc_p99_ms",
    "logins",
    "connects",
    "disconnects",
    "aborts",
    "unexpected_closes",
    "rest_reads",
    "rest_p99_ms",
    "rest_errors",
    "errors",
    "loadgen_cpu_pct",
    "loadavg_1m",
    "cpu_pressure_pct",
]

#: The row before the load starts.
NO_TICK = {
    **dict.fromkeys(COUNTERS, 0),
    "dm_lat_us": [],
    "bc_lat_us": [],
    "rest_lat_us": [],
    "online": 0,
}

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SoakError(Exception):
    """A setup problem: one line, exit code 2."""


# --- the read-only view of the database --------------------------------------

#: (column, SQL): the pending backlog (direct messages not yet delivered;
#: stored broadcasts stay ``pending``, to ``broadcast``) and table sizes.
COUNTS = [
    (
        "pending_direct",
        "SELECT count(*) FROM messages"
        " WHERE status = 'pending' AND to_user <> 'broadcast'",
    ),
    ("messages_rows", "SELECT count(*) FROM messages"),
    ("broadcast_deliveries_rows", "SELECT count(*) FROM broadcast_deliveries"),
    ("sessions_rows", "SELECT count(*) FROM sessions"),
    ("message_events_rows", "SELECT count(*) FROM message_events"),
]


class DbView:
    """A connection of our own that only reads (SQLite ``mode=ro``,
    PostgreSQL ``default_transaction_read_only``), used from a thread."""

    def __init__(self, backend: Backend, db: str) -> None:
        self.backend, self.db = backend, db
        self.conn = None

    def _open(self) -> None:
        if isinstance(self.backend, PostgresBackend):
            import psycopg

            from dkserver.store.url import parse_database_url

            conn = psycopg.connect(parse_database_url(self.db).conninfo)
            conn.autocommit = True
            conn.execute("SET default_transaction_read_only = on")
            self.conn = conn
        else:
            self.conn = sqlite3.connect(
                f"file:{quote(self.db)}?mode=ro", uri=True, check_same_thread=False
            )

    def _read(self) -> dict:
        if self.conn is None:
            self._open()
        out = {}
        for name, query in COUNTS:
            out[name] = int(self.conn.execute(query).fetchone()[0])
        if isinstance(self.backend, PostgresBackend):
            out["db_bytes"] = int(
                self.conn.execute(
                    "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                ).fetchone()[0]
            )
        else:
            out["db_bytes"] = sum(
                os.path.getsize(self.db + s)
                for s in ("", "-wal")
                if os.path.exists(self.db + s)
            )
        return out

    async def read(self) -> dict:
        try:
            return await asyncio.to_thread(self._read)
        except Exception as e:  # a busy moment: this sample goes without
            log(f"database read failed: {type(e).__name__}: {e}")
            self.close()
            return {}

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None


# --- the server's process ----------------------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def status(pid: int) -> dict[str, int]:
    """Threads and the parts of RSS (anonymous: the heap; file: mapped
    libraries and files) from ``/proc/PID/status``."""
    keys = {"Threads:": "threads", "RssAnon:": "rss_anon_kib"}
    keys["RssFile:"] = "rss_file_kib"
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in keys:
                out[keys[parts[0]]] = int(parts[1])
    return out


async def ws_connections(port: int, ctx) -> int | None:
    """``dkserver_websocket_connections`` from ``/metrics`` (loopback may
    read it without a token)."""
    try:
        http = await wire.http_connect(port, ctx, timeout=10)
        try:
            status, body = await http.request("GET", "/metrics", timeout=10)
        finally:
            http.close()
    except (ConnectionError, OSError, TimeoutError):
        return None
    if status != 200:
        return None
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("dkserver_websocket_connections "):
            return int(float(line.split()[1]))
    return None


def cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU
    (Linux PSI, ``/proc/pressure/cpu``): how contended the shared box was."""
    try:
        with open("/proc/pressure/cpu") as f:
            first = f.readline().split()
    except OSError:
        return None
    fields = dict(x.split("=", 1) for x in first[1:])
    return float(fields["avg10"]) if "avg10" in fields else None


def _ms(values: list[int], q: float) -> float | None:
    return round(pct(values, q) / 1000, 2) if values else None


# --- the run -------------------------------------------------------------------


def load_job(b: Bench, args, chunk, others, i, admin_token) -> dict:
    procs = len(args.chunks)
    return b.job(
        "soak",
        b.dk,
        users=chunk,
        others=others,
        tag=f"p{i}",
        seed=args.seed + i,
        steady_share=args.steady_share,
        offline_share=args.offline_share,
        churner_share=args.churner_share,
        online_s=list(args.online_s),
        offline_s=list(args.offline_s),
        abort_share=args.abort_share,
        dm_per_s=args.dm_rate / procs,
        bc_per_s=args.bc_rate / procs,
        rest_per_s=args.rest_rate / procs,
        stats_every_s=args.stats_every,
        pad="x" * args.pad_bytes,
        admin_token=admin_token if i == 0 else None,
        drain_s=args.drain_s,
        deadline_s=args.minutes * 60 + 600,
    )


class Sampler:
    """One row per interval: the server's process, its database, the load."""

    def __init__(self, dk, backend, db_view: DbView, ctx, writer) -> None:
        self.dk, self.backend, self.db_view, self.ctx = dk, backend, db_view, ctx
        self.writer = writer
        self.rows: list[dict] = []
        self.t0 = time.monotonic()
        self.last = (self.t0, dk.cpu(), backend.db_cpu())
        self.all_dm: list[int] = []
        self.all_bc: list[int] = []

    async def sample(self, ticks: list[dict], loadgen_cpu_pct=None) -> dict:
        now = time.monotonic()
        cpu, db_cpu = self.dk.cpu(), self.backend.db_cpu()
        t_last, cpu_last, db_last = self.last
        span = max(1e-6, now - t_last)
        self.last = (now, cpu, db_cpu)
        pid = self.dk.pid
        dm = sorted(x for t in ticks for x in t["dm_lat_us"])
        bc = sorted(x for t in ticks for x in t["bc_lat_us"])
        rest = sorted(x for t in ticks for x in t["rest_lat_us"])
        self.all_dm += dm
        self.all_bc += bc
        row = {
            "t_s": round(now - self.t0, 1),
            "rss_kib": rss_kib(pid),
            "fds": open_fds(pid),
            **status(pid),
            "server_cpu_pct": round((cpu - cpu_last) * 100 / span, 1),
            "db_cpu_pct": None
            if db_cpu is None or db_last is None
            else round((db_cpu - db_last) * 100 / span, 1),
            "ws_connections": await ws_connections(self.dk.port, self.ctx),
            "online": sum(t["online"] for t in ticks),
            **{name: None for name, _ in COUNTS},
            "db_bytes": None,
        }
        row.update(await self.db_view.read())
        for key in COUNTERS:
            row[key] = sum(t[key] for t in ticks)
        row.update(
            dm_p50_ms=_ms(dm, 0.50),
            dm_p99_ms=_ms(dm, 0.99),
            dm_max_ms=round(dm[-1] / 1000, 2) if dm else None,
            bc_p99_ms=_ms(bc, 0.99),
            rest_p99_ms=_ms(rest, 0.99),
            loadgen_cpu_pct=loadgen_cpu_pct,
            loadavg_1m=os.getloadavg()[0],
            cpu_pressure_pct=cpu_pressure(),
        )
        self.rows.append(row)
        self.writer.writerow(row)
        return row


async def run(args) -> dict:
    nofile = raise_nofile()
    be = args.backend
    tmp = tempfile.mkdtemp(prefix="dkbench-soak-")
    results: dict = {
        "meta": {
            "command": " ".join(["python -m bench", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "dkserver_commit": dkserver_version(),
            "backend": be.label,
            "nofile": nofile,
            "minutes": args.minutes,
            "interval_s": args.interval,
            "load": {
                k: getattr(args, k)
                for k in (
                    "users",
                    "procs",
                    "dm_rate",
                    "bc_rate",
                    "rest_rate",
                    "stats_every",
                    "steady_share",
                    "offline_share",
                    "churner_share",
                    "online_s",
                    "offline_s",
                    "abort_share",
                    "pad_bytes",
                )
            },
            "server_env": args.server_env,
            "bounds_per_h": {"rss_kib": args.rss_bound, "fds": args.fd_bound},
            "csv": args.out + ".csv",
            "tmp": tmp,
        },
    }
    log(f"soak: {args.minutes} min on {be.label}; series in {args.out}.csv")
    ok = False
    db_view = None
    gens = []
    dk = None
    t_start = time.monotonic()
    try:
        be.start()
        db, env = be.open(tmp)
        env = {**env, "DK_ADMIN_USERS": ADMIN, **args.server_env}
        dk = dkserver_proc(tmp, db, env)
        await dk.start()
        b = Bench(
            tmp=tmp,
            cafile=os.path.join(tmp, "c.pem"),
            dk=dk,
            procs=args.procs,
            db_cpu=be.db_cpu,
        )
        log(f"registering {args.users} users")
        users = await b.users(PREFIX, args.users)
        admin_token = dict(users)[ADMIN]
        args.chunks = split(users, args.procs)
        jobs = []
        for i, chunk in enumerate(args.chunks):
            others = [u for j, c in enumerate(args.chunks) if j != i for u, _ in c]
            jobs.append(load_job(b, args, chunk, others, i, admin_token))
        gens = await start_all(jobs, tmp, "soak")
        readies = await asyncio.gather(*(g.expect("ready", timeout=120) for g in gens))
        log(
            f"{sum(r['steady'] for r in readies)} steady users connected, "
            f"{sum(r['churners'] for r in readies)} churners; go"
        )
        ctx = wire.client_context(b.cafile)
        db_view = DbView(be, db)
        with open(args.out + ".csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            sampler = Sampler(dk, be, db_view, ctx, _Flushing(writer, f))
            lg_cpu = [0.0] * len(gens)
            await sampler.sample([NO_TICK])
            for g in gens:
                g.command("go")
            end = sampler.t0 + args.minutes * 60
            k = 0
            while True:
                k += 1
                due = min(end, sampler.t0 + k * args.interval)
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                for g in gens:
                    g.command("sample")
                ticks = await asyncio.gather(
                    *(g.expect("tick", timeout=60) for g in gens)
                )
                row_lg = sum(t["cpu_s"] for t in ticks)
                lg_span = max(1e-6, time.monotonic() - sampler.last[0])
                lg_pct = round((row_lg - sum(lg_cpu)) * 100 / lg_span, 1)
                lg_cpu = [t["cpu_s"] for t in ticks]
                row = await sampler.sample(ticks, lg_pct)
                _progress(row)
                if not dk.alive():
                    raise RuntimeError(f"dkserver died: {dk.tail()}")
                if due >= end:
                    break
        log("stopping the load; churners come back and drain their backlog")
        for g in gens:
            g.command("stop")
        finals = await asyncio.gather(
            *(g.expect("result", timeout=args.drain_s + 60) for g in gens)
        )
        await asyncio.gather(*(g.expect("closed", timeout=30) for g in gens))
        await asyncio.sleep(2.0)  # the server sees the closes
        after = {
            "rss_kib": dk.rss(),
            "fds": open_fds(dk.pid),
            **await db_view.read(),
        }
        ok = True
    finally:
        if db_view is not None:
            db_view.close()
        await stop_all(gens)
        if dk is not None:
            await dk.stop()
        kill_all()
        try:
            be.close()
            be.stop()
        except Exception:
            traceback.print_exc()
        if not ok:
            log(f"failed; server and load generator logs are in {tmp}")
    results["meta"]["seconds"] = round(time.monotonic() - t_start, 1)
    results["series"] = sampler.rows
    results["summary"] = summarize(sampler, finals, after, args)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


class _Flushing:
    """A csv writer whose rows reach the disk as they are taken (a run that
    dies leaves its series)."""

    def __init__(self, writer, f) -> None:
        self.writer, self.f = writer, f

    def writerow(self, row: dict) -> None:
        self.writer.writerow({k: row.get(k) for k in FIELDS})
        self.f.flush()


def _progress(row: dict) -> None:
    log(
        f"t={row['t_s']:.0f}s rss={row['rss_kib']} KiB fds={row['fds']} "
        f"cpu={row['server_cpu_pct']}% conns={row['ws_connections']} "
        f"pending={row['pending_direct']} dm={row['dm_sent']} "
        f"p99={row['dm_p99_ms']} ms logins={row['logins']} errors={row['errors']}"
    )


# --- the summary -------------------------------------------------------------


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["t_s"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _spread(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "max": None}
    s = sorted(values)
    return {"median": s[len(s) // 2], "max": s[-1]}


def summarize(sampler: Sampler, finals: list[dict], after: dict, args) -> dict:
    rows = sampler.rows
    load = rows[1:]  # rows[0] is the state before the load
    half = [r for r in rows if r["t_s"] >= rows[-1]["t_s"] / 2]
    for r in rows:
        if r.get("ws_connections") is not None:
            r["fds_minus_conns"] = r["fds"] - r["ws_connections"]
    trends = {
        "rss_kib": trend.trend(*_series(half, "rss_kib"), args.rss_bound),
        "rss_anon_kib": trend.trend(*_series(half, "rss_anon_kib"), args.rss_bound),
        "fds": trend.trend(*_series(half, "fds"), args.fd_bound),
        "fds_minus_conns": trend.trend(
            *_series(half, "fds_minus_conns"), args.fd_bound
        ),
    }
    first, last = rows[0], rows[-1]
    minutes = max(1e-9, last["t_s"] / 60)

    def total(key):
        return sum(r[key] or 0 for r in load)

    totals = {k: sum(f[f"total_{k}"] for f in finals) for k in COUNTERS}
    dm, bc = sorted(sampler.all_dm), sorted(sampler.all_bc)
    return {
        "samples": len(rows),
        "seconds": last["t_s"],
        "load_per_s": {
            "dm": round(total("dm_sent") / (minutes * 60), 1),
            "dm_to_offline": round(total("dm_to_offline") / (minutes * 60), 1),
            "broadcasts": round(total("bc_sent") / (minutes * 60), 2),
            "logins": round(total("logins") / (minutes * 60), 2),
            "rest_reads": round(total("rest_reads") / (minutes * 60), 1),
        },
        "totals": totals,
        "undelivered": sum(f["undelivered"] for f in finals),
        "duplicates": sum(f["duplicates"] for f in finals),
        "error_sample": [e for f in finals for e in f["error_sample"]][:10],
        "server_cpu_pct": _spread([r["server_cpu_pct"] for r in load]),
        "loadgen_cpu_pct": _spread([r["loadgen_cpu_pct"] for r in load]),
        # The box is shared: how busy it was besides this run.
        "loadavg_1m": _spread([r["loadavg_1m"] for r in load]),
        "cpu_pressure_pct": _spread([r["cpu_pressure_pct"] for r in load]),
        "rss_kib": {
            "start": first["rss_kib"],
            "end": last["rss_kib"],
            "min": min(r["rss_kib"] for r in rows),
            "max": max(r["rss_kib"] for r in rows),
            "after_drain": after.get("rss_kib"),
        },
        "fds": {
            "start": first["fds"],
            "end": last["fds"],
            "min": min(r["fds"] for r in rows),
            "max": max(r["fds"] for r in rows),
            "after_drain": after.get("fds"),
        },
        "pending_direct": {
            "start": first.get("pending_direct"),
            "end": last.get("pending_direct"),
            "max": _spread([r.get("pending_direct") for r in rows])["max"],
            "after_drain": after.get("pending_direct"),
        },
        "rows": {
            key: {"start": first.get(key), "end": after.get(key, last.get(key))}
            for key in (
                "messages_rows",
                "broadcast_deliveries_rows",
                "sessions_rows",
                "message_events_rows",
                "db_bytes",
            )
        },
        "dm_latency_ms": {
            "p50": _ms(dm, 0.5),
            "p99": _ms(dm, 0.99),
            "max": round(dm[-1] / 1000, 2) if dm else None,
            "samples": len(dm),
            "interval_p99": _spread([r["dm_p99_ms"] for r in load]),
        },
        "broadcast_latency_ms": {
            "p50": _ms(bc, 0.5),
            "p99": _ms(bc, 0.99),
            "interval_p99": _spread([r["bc_p99_ms"] for r in load]),
        },
        "rest_p99_ms": _spread([r["rest_p99_ms"] for r in load]),
        "trends": trends,
        "second_half_from_s": half[0]["t_s"] if half else None,
        "windows": windows(load, args.windows),
    }


def windows(rows: list[dict], n: int) -> list[dict]:
    """The series in ``n`` equal spans of time: how it went, at a glance."""
    if not rows:
        return []
    end = rows[-1]["t_s"]
    out = []
    for i in range(n):
        lo, hi = end * i / n, end * (i + 1) / n
        part = [r for r in rows if lo < r["t_s"] <= hi or (i == 0 and r["t_s"] == lo)]
        if not part:
            continue
        p99 = _spread([r["dm_p99_ms"] for r in part])
        out.append(
            {
                "from_s": round(lo),
                "to_s": round(hi),
                "rss_kib_end": part[-1]["rss_kib"],
                "fds_min": min(r["fds"] for r in part),
                "fds_max": max(r["fds"] for r in part),
                "pending_max": _spread([r["pending_direct"] for r in part])["max"],
                "dm_p50_ms_median": _spread([r["dm_p50_ms"] for r in part])["median"],
                "dm_p99_ms_median": p99["median"],
                "dm_p99_ms_max": p99["max"],
                "server_cpu_pct_median": _spread([r["server_cpu_pct"] for r in part])[
                    "median"
                ],
                "cpu_pressure_pct_median": _spread(
                    [r["cpu_pressure_pct"] for r in part]
                )["median"],
            }
        )
    return out


SPREAD = ("start", "end", "min", "max", "after_drain")


def render(results: dict) -> str:
    s = results["summary"]
    m = results["meta"]
    lines = [
        "",
        f"== soak: {s['seconds'] / 60:.1f} min on {m['backend']}, "
        f"{s['samples']} samples every {m['interval_s']} s "
        f"(dkserver {m['dkserver_commit']})",
        "load per second: " + ", ".join(f"{k} {v}" for k, v in s["load_per_s"].items()),
        f"server CPU % of one core: median {s['server_cpu_pct']['median']}, "
        f"max {s['server_cpu_pct']['max']}; load generators: median "
        f"{s['loadgen_cpu_pct']['median']}; machine load average (1 min, "
        f"2 cores, shared): median {s['loadavg_1m']['median']}, max "
        f"{s['loadavg_1m']['max']}; CPU pressure (PSI some avg10) median "
        f"{s['cpu_pressure_pct']['median']} %",
        f"delivery: {s['totals']['dm_received']}/{s['totals']['dm_sent']} direct "
        f"messages received, {s['undelivered']} undelivered, "
        f"{s['duplicates']} duplicates; {s['totals']['errors']} client errors, "
        f"{s['totals']['unexpected_closes']} unexpected closes",
    ]
    lines += _table(
        "resources (start = before the load)",
        ["figure", "start", "end", "min", "max", "after drain"],
        [
            ["RSS KiB", *(s["rss_kib"][k] for k in SPREAD)],
            ["fds", *(s["fds"][k] for k in SPREAD)],
            [
                "pending direct",
                s["pending_direct"]["start"],
                s["pending_direct"]["end"],
                None,
                s["pending_direct"]["max"],
                s["pending_direct"]["after_drain"],
            ],
        ]
        + [
            [key, v["start"], v["end"], None, None, None]
            for key, v in s["rows"].items()
        ],
    )
    lines += _table(
        f"trend over the second half (from t={s['second_half_from_s']} s; "
        "one-sided 95 % bounds, AR(1)-corrected)",
        ["series", "slope/h", "lower", "upper", "bound/h", "n_eff", "verdict"],
        [
            [
                key,
                t.get("slope_per_h"),
                t.get("lower95_per_h"),
                t.get("upper95_per_h"),
                t["bound_per_h"],
                t.get("n_effective"),
                f"{t['verdict']} ({t.get('why', '')})",
            ]
            for key, t in s["trends"].items()
        ],
    )
    d = s["dm_latency_ms"]
    lines += _table(
        "latency ms (direct messages to steady users; broadcasts; REST)",
        ["figure", "p50", "p99", "interval p99 median", "interval p99 max"],
        [
            [
                "direct",
                d["p50"],
                d["p99"],
                d["interval_p99"]["median"],
                d["interval_p99"]["max"],
            ],
            [
                "broadcast",
                s["broadcast_latency_ms"]["p50"],
                s["broadcast_latency_ms"]["p99"],
                s["broadcast_latency_ms"]["interval_p99"]["median"],
                s["broadcast_latency_ms"]["interval_p99"]["max"],
            ],
            [
                "REST",
                None,
                None,
                s["rest_p99_ms"]["median"],
                s["rest_p99_ms"]["max"],
            ],
        ],
    )
    lines += _table(
        "over time (direct-message p50/p99: medians of the intervals' figures)",
        [
            "from s",
            "to s",
            "RSS KiB",
            "fds",
            "pending max",
            "p50 ms",
            "p99 ms",
            "p99 max",
            "srv CPU %",
            "CPU pressure %",
        ],
        [
            [
                w["from_s"],
                w["to_s"],
                w["rss_kib_end"],
                f"{w['fds_min']}-{w['fds_max']}",
                w["pending_max"],
                w["dm_p50_ms_median"],
                w["dm_p99_ms_median"],
                w["dm_p99_ms_max"],
                w["server_cpu_pct_median"],
                w["cpu_pressure_pct_median"],
            ]
            for w in s["windows"]
        ],
    )
    if s["error_sample"]:
        lines.append("client errors (first): " + "; ".join(s["error_sample"][:3]))
    lines.append(f"series: {m['csv']}")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------


def _pair(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    try:
        pair = (float(lo), float(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want MIN,MAX seconds") from None
    if not 0 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: want 0 <= MIN <= MAX")
    return pair


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not _ENV_KEY.match(key):
        raise argparse.ArgumentTypeError(f"{text!r}: want KEY=VALUE")
    return key, value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench soak", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--minutes", type=float, required=True, help="load duration")
    p.add_argument("--interval", type=float, default=10.0, help="seconds per sample")
    p.add_argument(
        "--db",
        default="sqlite",
        help="sqlite (default), a new SQLite file, postgresql (a private "
        "server) or postgresql://… (a fresh schema there)",
    )
    p.add_argument(
        "--server-env",
        type=_env,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the server (repeatable), e.g. short retention",
    )
    d = DEFAULTS
    p.add_argument("--users", type=int, default=d["users"])
    p.add_argument("--procs", type=int, default=d["procs"], help="load generators")
    p.add_argument("--dm-rate", type=float, default=d["dm_rate"], help="DMs/s")
    p.add_argument("--bc-rate", type=float, default=d["bc_rate"], help="broadcasts/s")
    p.add_argument("--rest-rate", type=float, default=d["rest_rate"], help="reads/s")
    p.add_argument(
        "--stats-every",
        type=float,
        default=d["stats_every"],
        help="seconds between the admin's /stats reads (0: none)",
    )
    p.add_argument("--steady-share", type=float, default=d["steady_share"])
    p.add_argument(
        "--offline-share",
        type=float,
        default=d["offline_share"],
        help="share of DMs to offline churners",
    )
    p.add_argument(
        "--churner-share",
        type=float,
        default=d["churner_share"],
        help="share of DMs to online churners",
    )
    p.add_argument("--online-s", type=_pair, default=d["online_s"], metavar="MIN,MAX")
    p.add_argument("--offline-s", type=_pair, default=d["offline_s"], metavar="MIN,MAX")
    p.add_argument(
        "--abort-share",
        type=float,
        default=d["abort_share"],
        help="share of churner disconnects that abort the TCP connection",
    )
    p.add_argument("--pad-bytes", type=int, default=d["pad_bytes"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--drain-s", type=float, default=30.0, help="final drain limit")
    p.add_argument(
        "--rss-bound",
        type=float,
        default=1024.0,
        help="RSS KiB/h below which growth counts as flat",
    )
    p.add_argument(
        "--fd-bound",
        type=float,
        default=10.0,
        help="fds/h below which growth counts as flat",
    )
    p.add_argument(
        "--out",
        help="series path without extension (.csv, .json); default "
        "dk-soak-<time> in the temp dir",
    )
    p.add_argument(
        "--windows", type=int, default=6, help="spans of the summary's time table"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = p.parse_args(argv)
    if not args.minutes > 0 or not args.interval > 0:
        p.error("--minutes and --interval take a positive number")
    for key in ("users", "procs", "windows"):
        if getattr(args, key) < 1:
            p.error(f"--{key} takes a positive integer")
    if args.users < 4 * args.procs:
        p.error("--users: at least 4 per load generator")
    for key in ("dm_rate", "bc_rate", "rest_rate", "stats_every", "pad_bytes"):
        if getattr(args, key) < 0:
            p.error(f"--{key.replace('_', '-')} cannot be negative")
    for key in ("steady_share", "offline_share", "churner_share", "abort_share"):
        if not 0 <= getattr(args, key) <= 1:
            p.error(f"--{key.replace('_', '-')} takes a share in [0, 1]")
    if args.offline_share + args.churner_share > 1:
        p.error("--offline-share + --churner-share must not exceed 1")
    try:
        backends = parse_backends([args.db])
    except BackendError as e:
        p.error(str(e))
    if len(backends) != 1:
        p.error("--db: the soak runs on one backend")
    args.backend = backends[0]
    args.server_env = dict(args.server_env)
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = os.path.join(tempfile.gettempdir(), f"dk-soak-{stamp}")
    args.out = str(Path(args.out).resolve())
    if args.out.endswith((".csv", ".json")):
        args.out = args.out.rsplit(".", 1)[0]
    if not os.path.isdir(os.path.dirname(args.out)):
        p.error(f"--out: no directory {os.path.dirname(args.out)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[2:] if argv is None else argv  # after "soak"
    args = parse_args(argv)
    os.chdir(ROOT)
    try:
        results = asyncio.run(run(args))
    except (BackendError, SoakError) as e:
        kill_all()
        print(f"python -m bench soak: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kill_all()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        kill_all()
        traceback.print_exc()
        return 1
    with open(args.out + ".json", "wb") as f:
        f.write(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(render(results))
    print("BENCH_JSON " + orjson.dumps(results).decode(), flush=True)
    return 0
