"""The scenarios, run from the runner against servers it started.

Each scenario spreads its connections over ``procs`` load-generator processes
(``bench.loadgen``), waits until all are ready, reads the server process's CPU
time (``/proc/<pid>/stat`` utime+stime), says ``go``, collects the results and
reads the CPU time again after a short settle.  Users are registered fresh for
every run (a prefix per run), so no run sees another run's pending messages
or broadcasts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from bench import wire
from bench.procs import LoadGen, ServerProc, start_all, stop_all

#: Messages in flight per relay pair in the closed-loop (peak) runs.
WINDOW = 32


def split(items: list, k: int) -> list[list]:
    """``items`` dealt round-robin into at most ``k`` non-empty chunks."""
    k = max(1, min(k, len(items)))
    return [items[i::k] for i in range(k)]


def pct(sorted_values: list, q: float):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True, file=sys.stderr)


@dataclass
class Bench:
    tmp: str
    cafile: str
    dk: ServerProc
    procs: int = 2
    ceiling: ServerProc | None = None
    setup: list = field(default_factory=list)
    #: CPU seconds of the database server, when it is a process of its own
    #: on this machine (PostgreSQL started by the bench); else ``None``.
    db_cpu: Callable[[], float | None] = lambda: None
    #: The server's ``--db`` (a SQLite path or a PostgreSQL URL).
    db: str = ""
    _seq: int = 0

    def tag(self, kind: str) -> str:
        self._seq += 1
        return f"{kind}{self._seq}x"

    def job(self, kind: str, server: ServerProc, **fields) -> dict:
        return {"kind": kind, "port": server.port, "cafile": self.cafile, **fields}

    async def users(self, prefix: str, n: int) -> list[tuple[str, str]]:
        """Register and log in ``n`` fresh users; ``[(user_id, token)]``."""
        uids = [f"{prefix}{i}" for i in range(n)]
        chunks = split(uids, min(self.procs, max(1, n // 50)))
        jobs = []
        for i, chunk in enumerate(chunks):
            out = os.path.join(self.tmp, f"tokens-{prefix}-{i}.json")
            jobs.append(self.job("users", self.dk, users=chunk, conns=16, out=out))
        gens = await start_all(jobs, self.tmp, f"users-{prefix}")
        try:
            results = await asyncio.gather(
                *(g.expect("result", timeout=60 + n / 20) for g in gens)
            )
        finally:
            await stop_all(gens)
        tokens: dict[str, str] = {}
        for job in jobs:
            with open(job["out"], "rb") as f:
                tokens.update(orjson.loads(f.read()))
        errors = [e for r in results for e in r["errors"]]
        if errors or len(tokens) != n:
            raise RuntimeError(f"user setup {prefix}: {len(tokens)}/{n} {errors[:3]}")
        reg_s = max(r["register_s"] for r in results)
        login_s = max(r["login_s"] for r in results)
        self.setup.append(
            {
                "users": n,
                "register_per_s": n / reg_s if reg_s else None,
                "login_per_s": n / login_s if login_s else None,
            }
        )
        return [(u, tokens[u]) for u in uids]


@dataclass
class Measured:
    out: object
    #: CPU seconds of the server under test, and of the database server
    #: (``None`` when that is not a process of its own here).
    server_cpu: float
    db_cpu: float | None
    wall: float


async def _measured(b: Bench, server: ServerProc, run, settle=0.3) -> Measured:
    """Run ``run()`` between two readings of the servers' CPU time."""
    cpu0, db0 = server.cpu(), b.db_cpu() if server is b.dk else None
    t0 = time.perf_counter()
    out = await run()
    wall = time.perf_counter() - t0
    await asyncio.sleep(settle)
    db1 = b.db_cpu() if db0 is not None else None
    db = None if db0 is None or db1 is None else db1 - db0
    return Measured(out, server.cpu() - cpu0, db, wall)


def per(seconds: float | None, n: int) -> float | None:
    """CPU seconds as µs per unit of work (``None`` when unknown or no work)."""
    return round(seconds * 1e6 / n, 1) if seconds is not None and n else None


# --- logins ------------------------------------------------------------------


async def logins(b: Bench, clients: int, duration: float) -> dict:
    """``clients`` closed loops of challenge + verify on dkserver; then, when
    ``b.ceiling`` serves the login ceiling (its ``login_port``), the same on
    it with users registered there, and the ratios of the two."""

    async def run_on(server: ServerProc, port: int, uids: list[str]) -> dict:
        chunks = split(uids, min(b.procs, clients))
        jobs = [
            b.job("logins", server, users=c, duration=duration, port=port)
            for c in chunks
        ]
        gens = await start_all(jobs, b.tmp, f"logins{clients}-{server.name}")
        try:
            await asyncio.gather(*(g.expect("ready", timeout=60) for g in gens))

            async def run():
                for g in gens:
                    g.command("go")
                return await asyncio.gather(
                    *(g.expect("result", timeout=duration + 60) for g in gens)
                )

            m = await _measured(b, server, run)
        finally:
            await stop_all(gens)
        results = m.out
        n = sum(r["logins"] for r in results)
        span = (
            max(r["end_ns"] for r in results) - min(r["start_ns"] for r in results)
        ) / 1e9
        return {
            "logins": n,
            "seconds": round(span, 3),
            "logins_per_s": round(n / span, 1) if span else None,
            "server_cpu_us_per_login": per(m.server_cpu, n),
            "db_cpu_us_per_login": per(m.db_cpu, n),
            "loadgen_cpu_us_per_login": round(
                sum(r["cpu_s"] for r in results) * 1e6 / n, 1
            )
            if n
            else None,
        }

    users = await b.users(b.tag("l"), clients)
    out = {"clients": clients, **await run_on(b.dk, b.dk.port, [u for u, _ in users])}
    login_port = getattr(b.ceiling, "login_port", None)
    if login_port is None:
        return out
    # The ceiling's users: registered (and logged in once) on the ceiling.
    prefix = b.tag("lc")
    uids = [f"{prefix}{i}" for i in range(clients)]
    out_file = os.path.join(b.tmp, f"tokens-{prefix}.json")
    reg = b.job("users", b.ceiling, users=uids, conns=min(16, clients), out=out_file)
    reg["port"] = login_port
    gens = await start_all([reg], b.tmp, f"users-{prefix}")
    try:
        (done,) = await asyncio.gather(*(g.expect("result", timeout=60) for g in gens))
    finally:
        await stop_all(gens)
    if done["errors"] or done["tokens"] != clients:
        raise RuntimeError(f"ceiling user setup: {done}")
    ceiling = await run_on(b.ceiling, login_port, uids)
    out["ceiling"] = ceiling
    if ceiling["logins_per_s"] and out["logins_per_s"]:
        out["of_ceiling"] = round(out["logins_per_s"] / ceiling["logins_per_s"], 3)
    if ceiling["server_cpu_us_per_login"] and out["server_cpu_us_per_login"]:
        out["cpu_vs_ceiling"] = round(
            out["server_cpu_us_per_login"] / ceiling["server_cpu_us_per_login"], 3
        )
    return out


# --- relay -------------------------------------------------------------------


async def relay(
    b: Bench,
    target: str,
    pairs: int,
    count: int,
    rate: float = 0.0,
    size: int = 128,
    max_s: float = 60.0,
    batch: int = 1,
    window: int = WINDOW,
) -> dict:
    """``pairs`` sender->receiver pairs, ``count`` messages each.

    ``rate`` 0: closed loop, ``window`` messages in flight per pair (peak).
    ``rate`` > 0: open loop at ``rate`` messages/s in total, paced.
    ``batch``: frames per ``write`` (1: each frame its own TLS record, as
    independent clients would send them).
    """
    tag = b.tag("r" if target == "dk" else "c")
    if target == "dk":
        server = b.dk
        users = await b.users(tag, 2 * pairs)
        specs = [
            [
                users[2 * i][0],
                wire.dk_path(users[2 * i][1]),
                users[2 * i + 1][0],
                wire.dk_path(users[2 * i + 1][1]),
            ]
            for i in range(pairs)
        ]
    else:
        server = b.ceiling
        specs = [
            [
                f"{tag}{i}s",
                wire.ceiling_path(f"{tag}{i}s"),
                f"{tag}{i}r",
                wire.ceiling_path(f"{tag}{i}r"),
            ]
            for i in range(pairs)
        ]
    chunks = split(specs, b.procs)
    jobs = [
        b.job(
            "relay",
            server,
            pairs=c,
            count=count,
            size=size,
            window=window,
            rate=rate / pairs if rate else 0.0,
            max_s=max_s,
            batch=batch,
        )
        for c in chunks
    ]
    gens = await start_all(jobs, b.tmp, f"relay-{target}{pairs}")
    try:
        readies = await asyncio.gather(
            *(g.expect("ready", timeout=120 + count * pairs / 2000) for g in gens)
        )
        await asyncio.sleep(0.3)

        async def run():
            for g in gens:
                g.command("go")
            return await asyncio.gather(
                *(g.expect("result", timeout=max_s + 60) for g in gens)
            )

        m = await _measured(b, server, run)
        for g in gens:
            g.command("close")
        await asyncio.gather(*(g.expect("closed", timeout=30) for g in gens))
    finally:
        await stop_all(gens)
    results = m.out
    delivered = sum(r["delivered"] for r in results)
    expected = sum(r["expected"] for r in results)
    span = (
        max(r["end_ns"] for r in results) - min(r["start_ns"] for r in results)
    ) / 1e9
    lat = sorted(x for r in results for x in r["lat_us"])
    lg_cpu = sum(r["cpu_s"] for r in results)
    out = {
        "target": target,
        "pairs": pairs,
        "mode": f"paced {rate:.0f}/s" if rate else f"closed-loop window {window}",
        "frames_per_write": batch,
        "delivered": delivered,
        "expected": expected,
        "seconds": round(span, 3),
        "msgs_per_s": round(delivered / span, 1) if span else None,
        "p50_ms": round(pct(lat, 0.50) / 1000, 3) if lat else None,
        "p99_ms": round(pct(lat, 0.99) / 1000, 3) if lat else None,
        "max_ms": round(lat[-1] / 1000, 3) if lat else None,
        "server_cpu_us_per_msg": per(m.server_cpu, delivered),
        "db_cpu_us_per_msg": per(m.db_cpu, delivered),
        "server_cpu_cores": round(m.server_cpu / span, 2) if span else None,
        "loadgen_cpu_us_per_msg": round(lg_cpu * 1e6 / delivered, 1)
        if delivered
        else None,
        "presign_us_per_msg": round(
            sum(r["presign_cpu_us"] for r in readies) / len(readies), 1
        ),
        "stray_frames": sum(r["stray"] for r in results),
    }
    samples = [s for r in results for s in r["stray_sample"]]
    if samples:
        out["stray_sample"] = samples[:2]
    if rate:
        out["offered_per_s"] = round(rate, 1)
    return out


# --- broadcast fan-out ----------------------------------------------------------------


async def broadcast(b: Bench, clients: int, rounds: int, target: str = "dk") -> dict:
    """One sender broadcasts to ``clients`` receivers, ``rounds`` times; per
    round, when the median receiver (p50), the 99th percentile and the last
    one (all hold it) got it, from the sender's write.  ``target`` "ceiling":
    the same clients against the bare relay (no auth, no store, no proofs)."""
    tag = b.tag("b" if target == "dk" else "cb")
    if target == "dk":
        server = b.dk
        users = [(u, wire.dk_path(t)) for u, t in await b.users(tag, clients + 1)]
    else:
        server = b.ceiling
        users = [
            (f"{tag}{i}", wire.ceiling_path(f"{tag}{i}")) for i in range(clients + 1)
        ]
    sender, receivers = users[0], users[1:]
    chunks = split([[u, path] for u, path in receivers], b.procs)
    jobs = [
        b.job(
            "bcast",
            server,
            conns=c,
            rounds=rounds,
            sender=list(sender) if i == 0 else None,
        )
        for i, c in enumerate(chunks)
    ]
    gens = await start_all(jobs, b.tmp, f"bcast-{target}{clients}")
    per_round = []
    try:
        await asyncio.gather(
            *(g.expect("ready", timeout=120 + clients / 50) for g in gens)
        )
        await asyncio.sleep(1.0 + clients / 5000)
        for k in range(rounds):

            async def run(k=k):
                gens[0].command("send", round=k)
                sent = await gens[0].expect("sent", timeout=30, round=k)
                gots = await asyncio.gather(
                    *(g.expect("got", timeout=60, round=k) for g in gens)
                )
                return sent, gots

            m = await _measured(b, server, run, 0.5)
            sent, gots = m.out
            arrivals = sorted(a for got in gots for a in got["arrivals"])
            per_round.append(
                {
                    "received": len(arrivals),
                    "all_held_ms": round((arrivals[-1] - sent["ns"]) / 1e6, 2),
                    "p50_ms": round((pct(arrivals, 0.5) - sent["ns"]) / 1e6, 2),
                    "p99_ms": round((pct(arrivals, 0.99) - sent["ns"]) / 1e6, 2),
                    "server_cpu_us_per_delivery": per(m.server_cpu, len(arrivals)),
                }
            )
        for g in gens:
            g.command("close")
        await asyncio.gather(*(g.expect("result", timeout=30) for g in gens))
    finally:
        await stop_all(gens)

    def median(key: str) -> float:
        values = sorted(r[key] for r in per_round)
        return values[len(values) // 2]

    held = sorted(r["all_held_ms"] for r in per_round)
    return {
        "target": target,
        "clients": clients,
        "rounds": per_round,
        "p50_ms_median": median("p50_ms"),
        "p99_ms_median": median("p99_ms"),
        "all_held_ms_median": held[len(held) // 2],
        "all_held_ms_max": held[-1],
        "server_cpu_us_per_delivery_median": median("server_cpu_us_per_delivery"),
    }


# --- idle connections --------------------------------------------------------


async def connections(
    b: Bench, sizes: list[int], big_n: int, big_size: int = 256 * 1024
) -> dict:
    """Open idle WSS connections in steps up to max(sizes), one user each;
    server RSS per connection at every step; then one ``big_size`` message
    (each to itself) through ``big_n`` of them, twice on different
    connections: growth that repeats is per connection, growth that does not
    is the allocator's high-water mark."""
    sizes = sorted(sizes)
    users = await b.users(b.tag("i"), sizes[-1])
    # Registering and logging in thousands of users grows the server's heap,
    # which connections would then reuse: restart it (same database, same
    # JWT secret, so the tokens stay valid) for a clean baseline.
    rss_after_setup = b.dk.rss()
    await b.dk.stop()
    await b.dk.start()
    await asyncio.sleep(1.0)
    rss0 = b.dk.rss()
    steps = []
    all_gens: list[LoadGen] = []
    opened = 0
    big_rounds = []
    try:
        for size in sizes:
            new = [[u, wire.dk_path(t)] for u, t in users[opened:size]]
            jobs = [
                b.job("idle", b.dk, conns=c, concurrency=24)
                for c in split(new, b.procs)
            ]
            gens = await start_all(jobs, b.tmp, f"idle{size}")
            all_gens += gens
            cpu0 = b.dk.cpu()
            t0 = time.perf_counter()
            readies = await asyncio.gather(
                *(g.expect("ready", timeout=300 + len(new) / 10) for g in gens)
            )
            connect_s = time.perf_counter() - t0
            cpu = b.dk.cpu() - cpu0
            failed = sum(r["failed"] for r in readies)
            if failed:
                fails = [f for r in readies for f in r["failures"]]
                raise RuntimeError(f"{failed} connections failed: {fails[:3]}")
            await asyncio.sleep(2.0)
            idle0 = b.dk.cpu()
            await asyncio.sleep(2.0)
            idle_cpu = (b.dk.cpu() - idle0) / 2.0
            rss = b.dk.rss()
            steps.append(
                {
                    "conns": size,
                    "server_rss_kib": rss,
                    "kib_per_conn": round((rss - rss0) / size, 2),
                    "connect_s": round(connect_s, 2),
                    "connects_per_s": round(len(new) / connect_s, 1),
                    "server_cpu_us_per_connect": round(cpu * 1e6 / len(new), 1),
                    "server_idle_cpu_pct": round(idle_cpu * 100, 1),
                    "loadgen_kib_per_conn": round(
                        sum(g.rss() for g in all_gens) / size, 1
                    ),
                    "loadgen_cpu_us_per_connect": round(
                        sum(r["cpu_s"] for r in readies) * 1e6 / len(new), 1
                    ),
                }
            )
            opened = size
            log(f"connections: {size} open, server RSS {rss} KiB")
        # One large message through big_n connections, each to itself (in
        # through the connection, stored, out again); then through big_n others.
        for rnd in range(2):
            rss_before = b.dk.rss()
            gen = all_gens[0]  # holds 1/procs of the first step's connections
            gen.command("big", n=big_n, size=big_size, timeout=60, round=rnd)
            done = await gen.expect("big_done", timeout=90)
            got = done["got"]
            await asyncio.sleep(2.0)
            rss_after = b.dk.rss()
            await asyncio.sleep(3.0)
            rss_later = b.dk.rss()
            big_rounds.append(
                {
                    "conns": got,
                    "ok": done["ok"],
                    "kib_per_conn": round((rss_after - rss_before) / got, 1)
                    if got
                    else None,
                    "kib_per_conn_5s_later": round((rss_later - rss_before) / got, 1)
                    if got
                    else None,
                }
            )
    finally:
        for g in all_gens:
            if g.proc.returncode is None:
                g.command("close")
        await stop_all(all_gens)
    return {
        "rss_after_user_setup_kib": rss_after_setup,
        "rss_base_kib": rss0,
        "steps": steps,
        "big_message_bytes": big_size,
        "big_rounds": big_rounds,
        "big_ok": all(r["ok"] for r in big_rounds),
    }


# --- backlog drain -----------------------------------------------------------


async def backlog(b: Bench, count: int, size: int = 128) -> dict:
    (s, st), (r, rt) = await b.users(b.tag("k"), 2)
    job = b.job(
        "backlog",
        b.dk,
        sender=[s, wire.dk_path(st)],
        receiver=[r, wire.dk_path(rt)],
        count=count,
        size=size,
        max_s=120,
    )
    (gen,) = await start_all([job], b.tmp, f"backlog{count}")
    try:
        ready = await gen.expect("ready", timeout=180)
        await asyncio.sleep(0.5)

        async def run():
            gen.command("go")
            return await gen.expect("result", timeout=180)

        m = await _measured(b, b.dk, run)
    finally:
        await stop_all([gen])
    res = m.out
    return {
        "messages": count,
        "ok": res["ok"],
        "received": res["received"],
        "drain_s": round(res["total_s"], 3),
        "handshake_s": round(res["handshake_s"], 4),
        "first_msg_s": round(res["first_s"], 4) if res["first_s"] else None,
        "msgs_per_s": round(res["received"] / res["total_s"], 1),
        "server_cpu_us_per_msg": per(m.server_cpu, max(1, res["received"])),
        "db_cpu_us_per_msg": per(m.db_cpu, max(1, res["received"])),
        "fill_msgs_per_s": round(count / ready["fill_s"], 1),
    }


# --- public reads while relaying ---------------------------------------------

#: What each reader cycles through (``{random}``: a fresh unknown id each time).
READ_PATHS = ["/active-users", "/auth/users/{random}", "/stats"]


def _ok_per_s(path: dict, wall: float) -> float | None:
    return round(path["status"].get("200", 0) / wall, 1) if wall else None


def seed_users(db: str, count: int, prefix: str = "seed") -> float:
    """Insert ``count`` users straight into the server's database (its
    schema is migrated: the server is up); seconds taken.  Registering them
    through the API would take minutes per server run."""
    import base64

    key = base64.b64encode(bytes(32)).decode()
    now_ns = time.time_ns()
    rows = [(f"{prefix}{i:06d}", f"{prefix} {i}", key, now_ns) for i in range(count)]
    return insert_users(db, rows)


def insert_users(db: str, rows: list[tuple[str, str, str, int]]) -> float:
    """Insert ``(user_id, username, public_key, registered_ns)`` rows straight
    into a migrated database (COPY on PostgreSQL); seconds taken."""
    t0 = time.perf_counter()
    if "://" in db and db.startswith("postgresql"):
        import psycopg

        from dkserver.store.url import parse_database_url

        with psycopg.connect(parse_database_url(db).conninfo) as conn:
            with conn.cursor().copy(
                "COPY users (user_id, username, public_key, registered_ns) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
    else:
        import sqlite3

        conn = sqlite3.connect(db, timeout=30)
        try:
            with conn:
                conn.executemany(
                    "INSERT INTO users (user_id, username, public_key,"
                    " registered_ns) VALUES (?, ?, ?, ?)",
                    rows,
                )
        finally:
            conn.close()
    return time.perf_counter() - t0


async def probe_reads(b: Bench, token: str, n: int) -> dict:
    """Server CPU per request of each public read, ``n`` requests one after
    the other on one connection (from a loopback address per path, so the
    readers' per-IP buckets are not touched): CPU time, which the machine's
    other load does not inflate the way it inflates latency."""
    out = {}
    for k, path in enumerate(READ_PATHS):
        http = await wire.http_connect(
            b.dk.port, wire.client_context(b.cafile), source_ip=f"127.0.1.{k + 1}"
        )
        headers = {"Authorization": f"Bearer {token}"} if path == "/stats" else None
        try:
            url = path.replace("{random}", "x" + os.urandom(8).hex())
            await http.request("GET", url, headers=headers)  # warm (first load)
            statuses: dict[str, int] = {}
            cpu0 = b.dk.cpu()
            t0 = time.perf_counter()
            for _ in range(n):
                url = path.replace("{random}", "x" + os.urandom(8).hex())
                status, _ = await http.request("GET", url, headers=headers)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            wall = time.perf_counter() - t0
            cpu = b.dk.cpu() - cpu0
        finally:
            http.close()
        out[path] = {
            "requests": n,
            "status": statuses,
            "server_cpu_ms_per_req": round(cpu * 1000 / n, 2),
            "wall_ms_per_req": round(wall * 1000 / n, 2),
        }
    return out


async def reads(
    b: Bench,
    users: int,
    readers: int,
    pairs: int,
    rate: float,
    seconds: float,
) -> dict:
    """Relay p99 (paced at ``rate``) without and with ``readers`` clients
    looping on the public reads, with ``users`` registered users.

    Each reader connects from a loopback address of its own (127.0.0.2...),
    as separate clients would: per-IP limits apply to each.  The readers
    start together with the second relay run and stop after it.
    """
    # A database answer means the schema is migrated (listening comes first).
    http = await wire.http_connect(b.dk.port, wire.client_context(b.cafile))
    status, _ = await http.request("GET", "/auth/check-userid/nobody")
    http.close()
    if status != 200:
        raise RuntimeError(f"GET /auth/check-userid: {status}")
    seeded_s = seed_users(b.db, users)
    log(f"reads: {users} users seeded in {seeded_s:.1f} s")
    ((_, token),) = await b.users("rdadmin", 1)
    probe = await probe_reads(b, token, 50)
    per_pair = max(2, int(rate / pairs * seconds))
    log(f"reads: relay paced at {rate:.0f}/s, no readers")
    quiet = await relay(b, "dk", pairs, per_pair, rate=rate)
    clients = [{"ip": f"127.0.0.{2 + i}"} for i in range(readers)]
    jobs = [
        b.job("reads", b.dk, clients=c, token=token, paths=READ_PATHS)
        for c in split(clients, b.procs)
    ]
    gens = await start_all(jobs, b.tmp, f"reads{readers}")
    try:
        await asyncio.gather(*(g.expect("ready", timeout=60) for g in gens))
        log(f"reads: relay paced at {rate:.0f}/s, {readers} readers looping")
        cpu0 = b.dk.cpu()
        t0 = time.perf_counter()
        for g in gens:
            g.command("go")
        busy = await relay(b, "dk", pairs, per_pair, rate=rate)
        for g in gens:
            g.command("stop")
        results = await asyncio.gather(*(g.expect("result", timeout=180) for g in gens))
        wall = time.perf_counter() - t0
        cpu = b.dk.cpu() - cpu0
    finally:
        await stop_all(gens)
    by_path = {}
    for path in READ_PATHS:
        status: dict[str, int] = {}
        lat: list[int] = []
        nbytes = 0
        for r in results:
            s = r["stats"][path]
            for code, n in s["status"].items():
                status[code] = status.get(code, 0) + n
            lat += s["lat_us"]
            nbytes += s["bytes"]
        lat.sort()
        n = sum(status.values())
        by_path[path] = {
            "requests": n,
            "per_s": round(n / wall, 1) if wall else None,
            "status": status,
            "mib": round(nbytes / 2**20, 1),
            "p50_ms": round(pct(lat, 0.5) / 1000, 2) if lat else None,
            "p99_ms": round(pct(lat, 0.99) / 1000, 2) if lat else None,
        }
    return {
        "users": users,
        "readers": readers,
        "pairs": pairs,
        "rate": rate,
        # The figures side by side (bench.compare):
        "quiet_p99_ms": quiet["p99_ms"],
        "busy_p50_ms": busy["p50_ms"],
        "busy_p99_ms": busy["p99_ms"],
        "busy_max_ms": busy["max_ms"],
        "busy_msgs_per_s": busy["msgs_per_s"],
        "active_users_ok_per_s": _ok_per_s(by_path["/active-users"], wall),
        "reads_per_s": round(sum(p["requests"] for p in by_path.values()) / wall, 1)
        if wall
        else None,
        "active_users_server_cpu_ms": probe["/active-users"]["server_cpu_ms_per_req"],
        "readers_cpu_cores": round(sum(r["cpu_s"] for r in results) / wall, 2)
        if wall
        else None,
        "probe": probe,
        "seed_s": round(seeded_s, 2),
        "quiet": quiet,
        "busy": busy,
        "reads": by_path,
        "busy_server_cpu_cores": round(cpu / wall, 2) if wall else None,
    }
