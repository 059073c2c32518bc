"""``python -m bench storm``: a reconnect storm after a restart.

    .venv/bin/python -m bench storm                    # 10,000 users, 3 pending each
    .venv/bin/python -m bench storm --users 2000 --repeat 3
    .venv/bin/python -m bench storm --smoke            # tiny sizes (CI)
    .venv/bin/python -m bench storm --db postgresql    # a private PostgreSQL
    .venv/bin/python -m bench storm --against /tmp/base --repeat 3

Per server run (a fresh database; each ``--against`` checkout in the same
rounds):

1. ``users`` users are written straight into the database with their bench
   keys (:func:`bench.wire.signing_key`); one sender per load generator is
   registered through the API and sends each of them ``pending`` direct
   messages, so every message is stored as the server stores it (pending: its
   receiver is offline).  The stored pending count is checked.
2. The server is restarted (same database, same JWT secret).
3. The ceiling (``bench/ceiling.py``, same certificate) gets the same number
   of bare TLS + WebSocket connects (``/ws?id=NAME``), with the same
   concurrency: its CPU per connect is the shared cost.  Then a fresh
   ceiling gets the client's whole sequence (unless ``--no-login-ceiling``):
   the users are registered on its login port first (untimed), then each
   logs in there (challenge + verify over its worker's keep-alive HTTPS
   connection) and makes the bare connect.  Its CPU per connect is the bare
   stack's share of a dkserver connect, so the ratio to it shows what is
   dkserver's own (token check, session row, backlog, delivery proofs).
4. Storm: all users at once (``concurrency`` in flight over ``procs`` load
   generators) log in (challenge + verify over a keep-alive HTTPS connection
   of their worker), open their WebSocket and read their backlog; the client
   answers pings, so the server can prove each delivery.  Timed: until all
   are connected, until every backlog is in, until the database holds no
   pending row (every message marked delivered); server CPU from ``go`` to
   delivered; server RSS sampled every 50 ms and ``VmHWM`` after.  Refused
   connections are counted with their reasons (the bench lifts the
   documented per-IP and rate limits, as the other scenarios do).

Printed: a table per run, the ratio of dkserver's CPU per connect to the
ceiling's (``cpu_per_connect_of_ceiling``: against bare connects, the
issue's target), to the login ceiling's (``cpu_per_connect_of_login_ceiling``:
against the same client sequence) and to each ``--against`` checkout's, and
one ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench import wire
from bench.backends import BackendError, parse_backends
from bench.procs import kill_all, raise_nofile, start_all, stop_all
from bench.runner import ROOT, _table, ceiling_proc, dkserver_proc, dkserver_version
from bench.scenarios import Bench, insert_users, log, split

#: Content prefix of the storm's pending messages.
PREFIX = "storm|"


# --- the load generator's side (python -m bench.loadgen, kind "storm") -------


async def loadgen_job(job: dict, ctl, ctx) -> None:
    """``fill``: the sender stores ``pending`` messages for each receiver.
    ``bare``: connect to the ceiling.  ``bare-login``: register on the
    ceiling's login port (before ``ready``), then log in there and connect to
    the ceiling.  ``storm``: log in, connect, read the backlog.  The connect
    phases wait for ``go`` and keep their sockets open until ``close``."""
    from bench.loadgen import emit

    if job["phase"] == "fill":
        await _fill(job, ctl, ctx, emit)
    else:
        await _storm(job, ctl, ctx, emit)


async def _fill(job, ctl, ctx, emit) -> None:
    from bench.loadgen import store_through

    s_uid, s_path = job["sender"]
    key = wire.signing_key(s_uid)
    pad = "p" * max(0, job["size"] - len(PREFIX) - 2)
    frames = [
        wire.client_frame(wire.signed_message(key, s_uid, r, f"{PREFIX}{k}|{pad}"))
        for r in job["receivers"]
        for k in range(job["pending"])
    ]
    fill_s = await store_through(
        job["port"], s_uid, s_path, key, frames, ctx, job.get("max_s", 600)
    )
    emit("result", sent=len(frames), fill_s=fill_s)


async def _storm(job, ctl, ctx, emit) -> None:
    users: list[str] = job["users"]
    want = job.get("pending", 0)
    bare = job["phase"] == "bare"
    bare_login = job["phase"] == "bare-login"
    nworkers = max(1, min(job["concurrency"], len(users)))
    keys = {} if bare else {u: wire.signing_key(u) for u in users}
    login_port = job.get("login_port") or job["port"]
    https = (
        []
        if bare
        else [await wire.http_connect(login_port, ctx) for _ in range(nworkers)]
    )
    if bare_login:
        await _register(https, users, keys)
    got = dict.fromkeys(users, 0)
    conns: list = []
    failures: list[str] = []
    drained = asyncio.Event()
    short = [len(users) if want else 0]
    if not short[0]:
        drained.set()
    last_ns = [0, 0]  # last connect, last backlog message

    def reader(uid):
        def on_message(payload: bytes) -> None:
            if b'"content":"' + PREFIX.encode() in payload:
                n = got[uid] = got[uid] + 1
                if n == want:
                    last_ns[1] = time.time_ns()
                    short[0] -= 1
                    if not short[0]:
                        drained.set()

        return on_message

    emit("ready")
    await ctl.expect("go")
    cpu0 = time.process_time()
    start_ns = time.time_ns()
    queue = list(reversed(users))

    async def worker(http):
        while queue:
            uid = queue.pop()
            try:
                if bare:
                    path = wire.ceiling_path(uid)
                elif bare_login:
                    await wire.login(http, uid, keys[uid])
                    path = wire.ceiling_path(uid)
                else:
                    path = wire.dk_path(await wire.login(http, uid, keys[uid]))
                conns.append(await wire.ws_connect(job["port"], path, ctx, reader(uid)))
                last_ns[0] = time.time_ns()
            except (TimeoutError, OSError, ConnectionError, RuntimeError) as e:
                failures.append(f"{uid}: {type(e).__name__}: {e}")
                if want and got[uid] < want:
                    short[0] -= 1
                    if not short[0]:
                        drained.set()

    await asyncio.gather(*(worker(h) for h in (https or [None] * nworkers)))
    connected_ns = last_ns[0]
    ok = True
    try:
        await asyncio.wait_for(drained.wait(), job.get("max_s", 300))
    except TimeoutError:
        ok = False
    emit(
        "result",
        ok=ok and not failures,
        connected=len(conns),
        failed=len(failures),
        failures=failures[:5],
        received=sum(got.values()),
        complete=sum(1 for n in got.values() if n >= want),
        start_ns=start_ns,
        connected_ns=connected_ns,
        drained_ns=last_ns[1] if want else connected_ns,
        cpu_s=time.process_time() - cpu0,
    )
    await ctl.expect("close")
    for c in conns:
        c.close()
    for h in https:
        h.close()
    await asyncio.sleep(0.5)
    emit("closed")


async def _register(https: list, users: list[str], keys: dict) -> None:
    """Register ``users`` on the login ceiling, over the workers' connections."""
    queue = list(users)

    async def worker(http):
        while queue:
            uid = queue.pop()
            status = await wire.register(http, uid, keys[uid])
            if status not in (200, 201):
                raise RuntimeError(f"register {uid} on the login ceiling: {status}")

    await asyncio.gather(*(worker(h) for h in https))


# --- the runner's side -------------------------------------------------------


def seed_keyed_users(db: str, uids: list[str]) -> float:
    """Insert ``uids`` with their bench public keys straight into the
    server's (migrated) database; seconds taken."""
    now_ns = time.time_ns()
    rows = [(u, u, wire.public_key_b64(wire.signing_key(u)), now_ns) for u in uids]
    return insert_users(db, rows)


def pending_rows(db: str, prefix: str) -> int:
    """Direct messages to the storm's users still pending in the database."""
    sql = (
        "SELECT COUNT(*) FROM messages WHERE status = 'pending'"
        " AND to_user <> 'broadcast' AND to_user LIKE "
    )
    if db.startswith("postgresql"):
        import psycopg

        from dkserver.store.url import parse_database_url

        with psycopg.connect(parse_database_url(db).conninfo) as conn:
            return conn.execute(sql + "%s", (prefix + "%",)).fetchone()[0]
    import sqlite3

    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql + "?", (prefix + "%",)).fetchone()[0]
    finally:
        conn.close()


def vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


async def _connect_phase(b: Bench, server, jobs: list[dict], name: str, pending_of):
    """Start the load generators, ``go``, collect; server CPU and RSS peak.

    ``pending_of``: ``None`` (bare connects) or a function giving the stored
    pending count, polled after the backlogs are in until it is 0."""
    gens = await start_all(jobs, b.tmp, name)
    peak = [server.rss()]
    sampling = [True]

    async def sample():
        while sampling[0]:
            peak[0] = max(peak[0], server.rss())
            await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(g.expect("ready", timeout=120) for g in gens))
        sampler = asyncio.create_task(sample())
        cpu0 = server.cpu()
        go_ns = time.time_ns()
        for g in gens:
            g.command("go")
        n = sum(len(j["users"]) for j in jobs)
        results = await asyncio.gather(
            *(g.expect("result", timeout=300 + n / 20) for g in gens)
        )
        delivered_s = None
        left = None
        if pending_of is not None:
            deadline = time.monotonic() + 60
            left = await asyncio.to_thread(pending_of)
            while left and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                left = await asyncio.to_thread(pending_of)
            delivered_s = (time.time_ns() - go_ns) / 1e9
        # The delivery marks are the server's work too: CPU until they are in.
        await asyncio.sleep(0.3)
        cpu = server.cpu() - cpu0
        sampling[0] = False
        await sampler
        for g in gens:
            g.command("close")
        await asyncio.gather(*(g.expect("closed", timeout=60) for g in gens))
    finally:
        sampling[0] = False
        await stop_all(gens)
    connected = sum(r["connected"] for r in results)
    return {
        "connections": n,
        "connected": connected,
        "refused": sum(r["failed"] for r in results),
        "refusals": [f for r in results for f in r["failures"]][:5],
        "all_connected_s": round(
            (max(r["connected_ns"] for r in results) - go_ns) / 1e9, 3
        ),
        "all_drained_s": round(
            (max(r["drained_ns"] for r in results) - go_ns) / 1e9, 3
        ),
        "all_delivered_s": round(delivered_s, 3) if delivered_s is not None else None,
        "received": sum(r["received"] for r in results),
        "complete_backlogs": sum(r["complete"] for r in results),
        "pending_rows_after": left,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_us_per_connect": round(cpu * 1e6 / max(1, connected), 1),
        "server_rss_peak_kib": peak[0],
        "loadgen_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "ok": all(r["ok"] for r in results),
    }


async def storm_once(args, root: Path, be, run_dir: str) -> dict:
    db, env = be.open(run_dir)
    dk = dkserver_proc(run_dir, db, env, root)
    b = Bench(
        tmp=run_dir, cafile=os.path.join(run_dir, "c.pem"), dk=dk, procs=args.procs
    )
    prefix = "st" + base64.b32encode(os.urandom(5)).decode().lower() + "u"
    uids = [f"{prefix}{i:06d}" for i in range(args.users)]
    out: dict = {"users": args.users, "pending_each": args.pending}
    try:
        await dk.start()
        http = await wire.http_connect(dk.port, wire.client_context(b.cafile))
        status, _ = await http.request("GET", "/auth/check-userid/nobody")
        http.close()
        if status != 200:
            raise RuntimeError(f"GET /auth/check-userid: {status}")
        out["seed_s"] = round(seed_keyed_users(db, uids), 2)
        if args.pending:
            senders = await b.users(b.tag("stormsend"), args.procs)
            slices = split(uids, len(senders))
            jobs = [
                b.job(
                    "storm",
                    dk,
                    phase="fill",
                    sender=[s, wire.dk_path(t)],
                    receivers=chunk,
                    pending=args.pending,
                    size=args.size,
                )
                for (s, t), chunk in zip(senders, slices, strict=False)
            ]
            gens = await start_all(jobs, run_dir, "storm-fill")
            t0 = time.perf_counter()
            try:
                await asyncio.gather(*(g.expect("result", timeout=600) for g in gens))
            finally:
                await stop_all(gens)
            out["fill_s"] = round(time.perf_counter() - t0, 2)
        stored = await asyncio.to_thread(pending_rows, db, prefix)
        if stored != args.users * args.pending:
            raise RuntimeError(
                f"stored {stored} pending, want {args.users * args.pending}"
            )
        out["pending_rows_before"] = stored
        log(f"storm: {args.users} users, {stored} pending; restarting the server")
        await dk.stop()
        await dk.start()
        await asyncio.sleep(1.0)
        out["server_rss_after_restart_kib"] = dk.rss()

        def jobs_for(server, phase):
            return [
                b.job(
                    "storm",
                    server,
                    phase=phase,
                    users=chunk,
                    pending=args.pending if phase == "storm" else 0,
                    concurrency=max(1, args.concurrency // args.procs),
                    deadline_s=1800,
                    login_port=getattr(server, "login_port", None),
                )
                for chunk in split(uids, args.procs)
            ]

        b.ceiling = ceiling_proc(run_dir)
        await b.ceiling.start()
        log(f"storm: {args.users} bare connects to the ceiling")
        out["ceiling"] = await _connect_phase(
            b, b.ceiling, jobs_for(b.ceiling, "bare"), "storm-bare", None
        )
        await b.ceiling.stop()
        b.ceiling = None
        if args.login_ceiling:
            b.ceiling = ceiling_proc(run_dir)
            await b.ceiling.start()
            log(f"storm: {args.users} bare logins + connects to the ceiling")
            out["login_ceiling"] = await _connect_phase(
                b,
                b.ceiling,
                jobs_for(b.ceiling, "bare-login"),
                "storm-bare-login",
                None,
            )
            await b.ceiling.stop()
            b.ceiling = None
        log(f"storm: {args.users} users log in, connect and read their backlog")
        out["storm"] = await _connect_phase(
            b,
            dk,
            jobs_for(dk, "storm"),
            "storm-dk",
            lambda: pending_rows(db, prefix),
        )
        out["storm"]["server_vm_hwm_kib"] = vm_hwm_kib(dk.pid)
        out["pending_rows_after_close"] = await asyncio.to_thread(
            pending_rows, db, prefix
        )
        c = out["ceiling"]["server_cpu_us_per_connect"]
        s = out["storm"]["server_cpu_us_per_connect"]
        out["cpu_per_connect_of_ceiling"] = round(s / c, 2) if c else None
        if "login_ceiling" in out:
            cl = out["login_ceiling"]["server_cpu_us_per_connect"]
            out["cpu_per_connect_of_login_ceiling"] = round(s / cl, 2) if cl else None
        if not dk.alive():
            raise RuntimeError(f"dkserver died: {dk.tail()}")
    finally:
        await dk.stop()
        if b.ceiling is not None:
            await b.ceiling.stop()
        be.close()
    return out


async def run(args) -> dict:
    nofile = raise_nofile()
    tmp = tempfile.mkdtemp(prefix="dkstorm-")
    be = parse_backends([args.db])[0]
    roots = [ROOT, *args.against]
    versions = {root: dkserver_version(root) for root in roots}
    result: dict = {
        "meta": {
            "command": " ".join(["python -m bench storm", *sys.argv[2:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cpus": os.cpu_count(),
            "nofile": nofile,
            "db": be.label,
            "users": args.users,
            "pending": args.pending,
            "concurrency": args.concurrency,
            "loadgen_procs": args.procs,
            "dkserver_commit": versions[ROOT],
            "against": {str(r): versions[r] for r in args.against},
            "repeat": args.repeat,
        },
        "runs": [],
    }
    ok = False
    try:
        be.start()
        for rnd in range(args.repeat):
            order = roots if rnd % 2 == 0 else roots[::-1]
            for i, root in enumerate(order):
                run_dir = os.path.join(tmp, f"{rnd + 1}-{i}")
                os.makedirs(run_dir)
                label = "this" if root == ROOT else root.name
                log(f"round {rnd + 1}: {label} ({versions[root]})")
                r = await storm_once(args, root, be, run_dir)
                result["runs"].append(
                    {"round": rnd + 1, "checkout": label, "commit": versions[root], **r}
                )
        ok = True
    finally:
        kill_all()
        be.stop()
        if not ok or args.keep:
            log(f"logs are in {tmp}")
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result["summary"] = summary(result["runs"])
    return result


def _median(values: list) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def summary(runs: list[dict]) -> dict:
    """Medians per checkout; the ratio to the ceiling, and to this checkout."""
    out: dict = {}
    for label in dict.fromkeys(r["checkout"] for r in runs):
        mine = [r for r in runs if r["checkout"] == label]
        out[label] = {
            key: _median([f(r) for r in mine])
            for key, f in (
                (
                    "cpu_per_connect_of_ceiling",
                    lambda r: r["cpu_per_connect_of_ceiling"],
                ),
                (
                    "server_cpu_us_per_connect",
                    lambda r: r["storm"]["server_cpu_us_per_connect"],
                ),
                (
                    "ceiling_cpu_us_per_connect",
                    lambda r: r["ceiling"]["server_cpu_us_per_connect"],
                ),
                (
                    "cpu_per_connect_of_login_ceiling",
                    lambda r: r.get("cpu_per_connect_of_login_ceiling"),
                ),
                (
                    "login_ceiling_cpu_us_per_connect",
                    lambda r: r.get("login_ceiling", {}).get(
                        "server_cpu_us_per_connect"
                    ),
                ),
                ("all_connected_s", lambda r: r["storm"]["all_connected_s"]),
                ("all_drained_s", lambda r: r["storm"]["all_drained_s"]),
                ("all_delivered_s", lambda r: r["storm"]["all_delivered_s"]),
                ("server_vm_hwm_kib", lambda r: r["storm"]["server_vm_hwm_kib"]),
            )
        }
        out[label]["lost"] = sum(r["pending_rows_after_close"] for r in mine)
        out[label]["refused"] = sum(r["storm"]["refused"] for r in mine)
    if "this" in out:
        base = out["this"]["server_cpu_us_per_connect"]
        for s in out.values():
            v = s["server_cpu_us_per_connect"]
            s["cpu_per_connect_of_this"] = round(v / base, 3) if base and v else None
    return out


def render(result: dict) -> str:
    m = result["meta"]
    rows = []
    for r in result["runs"]:
        s, c = r["storm"], r["ceiling"]
        cl = r.get("login_ceiling", {})
        rows.append(
            [
                r["round"],
                r["checkout"],
                f"{s['connected']}/{s['connections']}",
                s["refused"],
                s["all_connected_s"],
                s["all_drained_s"],
                s["all_delivered_s"],
                r["pending_rows_after_close"],
                s["server_cpu_us_per_connect"],
                c["server_cpu_us_per_connect"],
                r["cpu_per_connect_of_ceiling"],
                cl.get("server_cpu_us_per_connect"),
                r.get("cpu_per_connect_of_login_ceiling"),
                s["server_vm_hwm_kib"],
                s["server_rss_peak_kib"],
            ]
        )
    lines = _table(
        f"reconnect storm on {m['db']}: {m['users']} users, {m['pending']} pending "
        f"each, {m['concurrency']} in flight over {m['loadgen_procs']} load generators",
        [
            "rnd",
            "checkout",
            "connected",
            "refused",
            "all conn s",
            "drained s",
            "delivered s",
            "left pending",
            "dk µs/conn",
            "ceiling µs/conn",
            "dk/ceiling",
            "login-ceil µs/conn",
            "dk/login-ceil",
            "VmHWM KiB",
            "RSS peak KiB",
        ],
        rows,
    )
    lines.append("")
    for label, s in result["summary"].items():
        lines.append(
            f"{label}: median dk/ceiling CPU per connect "
            f"{s['cpu_per_connect_of_ceiling']} (target <= 1.3), "
            f"{s['server_cpu_us_per_connect']} µs against "
            f"{s['ceiling_cpu_us_per_connect']}; of this checkout "
            f"{s.get('cpu_per_connect_of_this')}; lost {s['lost']}, "
            f"refused {s['refused']}"
        )
        if s.get("cpu_per_connect_of_login_ceiling") is not None:
            lines.append(
                f"{label}: median dk/login-ceiling CPU per connect "
                f"{s['cpu_per_connect_of_login_ceiling']} (the same client "
                "sequence on the bare stack: challenge + verify + connect), "
                f"{s['server_cpu_us_per_connect']} µs against "
                f"{s['login_ceiling_cpu_us_per_connect']}"
            )
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench storm")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--pending", type=int, default=3, help="pending messages each")
    p.add_argument("--size", type=int, default=128, help="content bytes")
    p.add_argument(
        "--concurrency",
        type=int,
        default=48,
        help="logins + connects in flight (all load generators; dkserver "
        "listens with Twisted's default backlog of 50)",
    )
    p.add_argument(
        "--db", default="sqlite", help="sqlite or postgresql (as bench --db)"
    )
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--repeat", type=int, default=1, help="rounds (order alternates)")
    p.add_argument(
        "--against",
        action="append",
        type=Path,
        default=[],
        metavar="CHECKOUT",
        help="also run this checkout's dkserver in the same rounds",
    )
    p.add_argument(
        "--no-login-ceiling",
        dest="login_ceiling",
        action="store_false",
        help="skip the login ceiling (bare login + connect per user)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--smoke", action="store_true", help="tiny sizes")
    args = p.parse_args(argv)
    if args.smoke:
        args.users, args.pending, args.concurrency = 20, 2, 8
    if (
        min(args.users, args.procs, args.repeat, args.concurrency) < 1
        or args.pending < 0
    ):
        p.error("--users, --procs, --repeat and --concurrency take a positive integer")
    args.against = [d.resolve() for d in args.against]
    for d in args.against:
        if not (d / "dkserver" / "__init__.py").is_file():
            p.error(f"--against {d}: not a dkserver checkout")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[2:] if argv is None else argv)
    try:
        result = asyncio.run(run(args))
    except BackendError as e:
        kill_all()
        print(f"python -m bench storm: {e}", file=sys.stderr)
        return 2
    print(render(result))
    print("BENCH_JSON " + orjson.dumps(result).decode(), flush=True)
    return 0
