"""The bench runner: ``python -m bench {all,smoke,logins,relay,ceiling,...}``.

Starts dkserver (``twistd -n dkserver``) on loopback with the rate limits
lifted and a fresh database and certificate in a temporary directory, starts
the bare Autobahn relay (``bench.ceiling``) on the same certificate for the
ceiling runs, runs the scenarios with load generators in their own processes,
prints a table and one ``BENCH_JSON {...}`` line.  Every child process is
killed at the end, error or not.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import orjson

from bench import compare, scenarios, wire
from bench.backends import Backend, BackendError, parse_backends
from bench.procs import ServerProc, free_port, kill_all, raise_nofile
from bench.scenarios import Bench, log

ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = {
    "logins": {"clients": [1, 4, 16], "duration": 3.0},
    "relay": {
        "pairs": [10, 50, 200],
        # Messages per closed-loop run: ``seconds`` at the last measured rate
        # of that server (first guess ``guess``), within [min, max]; or a fixed
        # ``messages`` total.
        "messages": None,
        "seconds": 5.0,
        "guess": {"dk": 5000, "ceiling": 30000},
        "min": 5000,
        "max": 250000,
        "half_s": 5.0,
        "batch": 1,
        "window": 32,
    },
    "broadcast": {"clients": [100, 1000, 5000], "rounds": 3},
    "connections": {"conns": [1000, 5000, 10000], "big": 100},
    "backlog": {"messages": [1000, 5000, 10000]},
    "reads": {
        "users": 100_000,
        "readers": 8,
        "pairs": 10,
        "rate": 1000.0,
        "seconds": 5.0,
    },
}
SMOKE = {
    "logins": {"clients": [1], "duration": 0.3},
    "relay": {"pairs": [2], "messages": 200, "half_s": 0.5, "batch": 1, "window": 32},
    "broadcast": {"clients": [3], "rounds": 1},
    "connections": {"conns": [4, 8], "big": 1},
    "backlog": {"messages": [20]},
    "reads": {"users": 200, "readers": 2, "pairs": 2, "rate": 100.0, "seconds": 0.5},
}
ORDER = ["logins", "relay", "backlog", "broadcast", "connections"]
#: ``compare``: the scenarios whose cost the database shapes.
COMPARED = ["logins", "relay", "backlog"]

# The targets (2-core box, load generator on the same box).
TARGETS = {
    "relay_server_cpu_us_per_msg": ("<=", 100),
    "relay_msgs_per_s": (">=", 10000),
    "relay_fraction_of_ceiling": (">=", 0.60),
    "relay_p99_ms_at_half_rate": ("<", 50),
    "relay_p99_of_ceiling_at_half_rate": ("<=", 2.0),
    "logins_per_s": (">=", 1500),
    "broadcast_1000_all_held_ms": ("<=", 50),
    "broadcast_5000_all_held_ms": ("<", 1000),
    "broadcast_1000_p50_vs_ceiling": ("<=", 0.8),
    "idle_kib_per_conn_10000": ("<=", 36),
    "backlog_10000_drain_s": ("<", 1.0),
}


def dkserver_version(root: Path = ROOT) -> str:
    """The commit bench ran against (``+dirty`` with local changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "dkserver"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def server_env(extra: dict[str, str] | None = None, root: Path = ROOT) -> dict:
    env = dict(os.environ)
    env.update(
        MESSAGE_RATE_LIMIT="1e9",
        MESSAGE_BURST_LIMIT="1000000000",
        LOGIN_RATE_LIMIT="1e9",
        LOGIN_BURST_LIMIT="1000000000",
        # The reads scenario's administrator (GET /stats).
        DK_ADMIN_USERS="rdadmin0",
        # 10,000 connections come from one loopback address.
        DK_MAX_CONNECTIONS_PER_IP="1000000",
    )
    env.pop("JWT_SECRET", None)
    env.pop("DK_JWT_SECRET_FILE", None)
    env.update(extra or {})
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def dkserver_proc(
    tmp: str, db: str, env: dict[str, str], root: Path = ROOT
) -> ServerProc:
    """dkserver from the checkout ``root`` (its ``dkserver`` package comes
    first on the path), on ``db``."""
    port = free_port()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    argv = [
        twistd,
        "-n",
        "--pidfile=",
        "dkserver",
        "--https",
        f"127.0.0.1:{port}",
        "--http",
        "none",
        "--db",
        db,
        "--cert",
        os.path.join(tmp, "c.pem"),
        "--key",
        os.path.join(tmp, "k.pem"),
    ]
    return ServerProc(
        "dkserver", argv, server_env(env, root), port, os.path.join(tmp, "dk.log")
    )


def ceiling_proc(tmp: str) -> ServerProc:
    """The ceiling process: the relay on ``port``, the login ceiling on its
    ``login_port`` (an attribute the logins scenario looks for)."""
    port, login_port = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.ceiling",
        "--port",
        str(port),
        "--login-port",
        str(login_port),
        "--cert",
        os.path.join(tmp, "c.pem"),
        "--key",
        os.path.join(tmp, "k.pem"),
    ]
    proc = ServerProc(
        "ceiling", argv, server_env(), port, os.path.join(tmp, "ceiling.log")
    )
    proc.login_port = login_port
    return proc


# --- scenario drivers --------------------------------------------------------


async def run_logins(b: Bench, cfg: dict, with_ceiling: bool = True) -> list:
    out = []
    if with_ceiling and b.ceiling is None:
        b.ceiling = ceiling_proc(b.tmp)
        await b.ceiling.start()
    try:
        for c in cfg["clients"]:
            log(f"logins: {c} concurrent clients, {cfg['duration']} s")
            out.append(await scenarios.logins(b, c, cfg["duration"]))
    finally:
        if b.ceiling is not None:
            await b.ceiling.stop()
            b.ceiling = None
    return out


def relay_count(cfg: dict, target: str, pairs: int) -> int:
    """Messages per pair for one closed-loop run."""
    total = cfg.get("messages")
    if not total:
        rate = cfg["guess"][target]
        total = min(cfg["max"], max(cfg["min"], int(rate * cfg["seconds"])))
    return max(10, total // pairs)


def _learn(cfg: dict, target: str, run: dict) -> None:
    if run.get("msgs_per_s") and "guess" in cfg:
        cfg["guess"][target] = run["msgs_per_s"]


async def run_relay(b: Bench, cfg: dict, with_ceiling: bool = True) -> dict:
    res = {"dk": [], "ceiling": [], "dk_half_rate": [], "ceiling_half_rate": []}
    if with_ceiling and b.ceiling is None:
        b.ceiling = ceiling_proc(b.tmp)
        await b.ceiling.start()
    try:
        for n in cfg["pairs"]:
            count = relay_count(cfg, "dk", n)
            log(f"relay: dkserver, {n} pairs x {count} messages (closed loop)")
            peak = await scenarios.relay(
                b, "dk", n, count, batch=cfg["batch"], window=cfg["window"]
            )
            res["dk"].append(peak)
            _learn(cfg, "dk", peak)
            if with_ceiling:
                count = relay_count(cfg, "ceiling", n)
                log(f"relay: ceiling, {n} pairs x {count} messages (closed loop)")
                ceil = await scenarios.relay(
                    b, "ceiling", n, count, batch=cfg["batch"], window=cfg["window"]
                )
                res["ceiling"].append(ceil)
                _learn(cfg, "ceiling", ceil)
                if ceil["msgs_per_s"]:
                    peak["fraction_of_ceiling"] = round(
                        peak["msgs_per_s"] / ceil["msgs_per_s"], 3
                    )
            half = (peak["msgs_per_s"] or 0) / 2
            if half > 0:
                per_pair = max(2, int(half / n * cfg["half_s"]))
                log(f"relay: dkserver, {n} pairs paced at {half:.0f}/s")
                paced = await scenarios.relay(b, "dk", n, per_pair, rate=half)
                res["dk_half_rate"].append(paced)
                if with_ceiling:
                    # The same offered rate on the bare stack: the p99 the
                    # stack itself costs at that load.
                    log(f"relay: ceiling, {n} pairs paced at {half:.0f}/s")
                    bare = await scenarios.relay(b, "ceiling", n, per_pair, rate=half)
                    res["ceiling_half_rate"].append(bare)
                    if paced["p99_ms"] and bare["p99_ms"]:
                        paced["p99_of_ceiling"] = round(
                            paced["p99_ms"] / bare["p99_ms"], 2
                        )
    finally:
        if b.ceiling is not None:
            await b.ceiling.stop()
            b.ceiling = None
    return res


async def run_ceiling_only(b: Bench, cfg: dict) -> dict:
    b.ceiling = ceiling_proc(b.tmp)
    await b.ceiling.start()
    out = []
    try:
        for n in cfg["pairs"]:
            count = relay_count(cfg, "ceiling", n)
            log(f"relay: ceiling, {n} pairs x {count} messages")
            run = await scenarios.relay(
                b, "ceiling", n, count, batch=cfg["batch"], window=cfg["window"]
            )
            out.append(run)
            _learn(cfg, "ceiling", run)
    finally:
        await b.ceiling.stop()
        b.ceiling = None
    return {"ceiling": out}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


async def run_broadcast(b: Bench, cfg: dict, with_ceiling: bool = True) -> list:
    """dkserver's fan-out, then (unless ``with_ceiling`` is False) the
    ceiling's with the same number of clients and rounds, each size in
    turn; the dkserver entries carry the ceiling's run and the ratios."""
    out = []
    if with_ceiling and b.ceiling is None:
        b.ceiling = ceiling_proc(b.tmp)
        await b.ceiling.start()
    try:
        for c in cfg["clients"]:
            log(f"broadcast: dkserver, {c} clients, {cfg['rounds']} rounds")
            dk = await scenarios.broadcast(b, c, cfg["rounds"])
            out.append(dk)
            if with_ceiling:
                log(f"broadcast: ceiling, {c} clients, {cfg['rounds']} rounds")
                ceil = await scenarios.broadcast(b, c, cfg["rounds"], "ceiling")
                dk["ceiling"] = ceil
                for name in ("p50", "p99", "all_held"):
                    dk[f"{name}_vs_ceiling"] = _ratio(
                        dk[f"{name}_ms_median"], ceil[f"{name}_ms_median"]
                    )
    finally:
        if b.ceiling is not None:
            await b.ceiling.stop()
            b.ceiling = None
    return out


async def run_connections(b: Bench, cfg: dict) -> dict:
    log(f"connections: {cfg['conns']} idle WSS, big message through {cfg['big']}")
    return await scenarios.connections(b, cfg["conns"], cfg["big"])


async def run_backlog(b: Bench, cfg: dict) -> list:
    out = []
    for m in cfg["messages"]:
        log(f"backlog: {m} pending messages")
        out.append(await scenarios.backlog(b, m))
    return out


async def run_reads(b: Bench, cfg: dict) -> list:
    log(
        f"reads: {cfg['users']} users, {cfg['readers']} readers, relay "
        f"{cfg['pairs']} pairs at {cfg['rate']:.0f}/s"
    )
    return [
        await scenarios.reads(
            b, cfg["users"], cfg["readers"], cfg["pairs"], cfg["rate"], cfg["seconds"]
        )
    ]


# --- targets and output ------------------------------------------------------


def evaluate(r: dict) -> dict:
    vals: dict[str, float | None] = {}
    relay = r.get("relay") or {}
    dk = [x for x in relay.get("dk", []) if x.get("msgs_per_s")]
    if dk:
        best = max(dk, key=lambda x: x["msgs_per_s"])
        vals["relay_msgs_per_s"] = best["msgs_per_s"]
        vals["relay_server_cpu_us_per_msg"] = best["server_cpu_us_per_msg"]
        vals["relay_fraction_of_ceiling"] = best.get("fraction_of_ceiling")
    half = [x for x in relay.get("dk_half_rate", []) if x.get("p99_ms") is not None]
    if half:
        vals["relay_p99_ms_at_half_rate"] = max(x["p99_ms"] for x in half)
        ratios = [x["p99_of_ceiling"] for x in half if x.get("p99_of_ceiling")]
        if ratios:
            vals["relay_p99_of_ceiling_at_half_rate"] = max(ratios)
    if r.get("logins"):
        vals["logins_per_s"] = max(x["logins_per_s"] or 0 for x in r["logins"])
    for x in r.get("broadcast") or []:
        if x["clients"] in (1000, 5000):
            vals[f"broadcast_{x['clients']}_all_held_ms"] = x["all_held_ms_median"]
            vals[f"broadcast_{x['clients']}_p50_vs_ceiling"] = x.get("p50_vs_ceiling")
    conns = r.get("connections") or {}
    for s in conns.get("steps", []):
        if s["conns"] == 10000:
            vals["idle_kib_per_conn_10000"] = s["kib_per_conn"]
    for x in r.get("backlog") or []:
        if x["messages"] == 10000:
            vals["backlog_10000_drain_s"] = x["drain_s"]
    out = {}
    for key, (op, limit) in TARGETS.items():
        v = vals.get(key)
        if v is None:
            continue
        ok = {"<=": v <= limit, ">=": v >= limit, "<": v < limit}[op]
        out[key] = {"value": v, "target": f"{op} {limit}", "met": ok}
    return out


def _row(cols, widths):
    return "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=False))
    )


def _table(title, header, rows):
    if not rows:
        return []
    rows = [["-" if c is None else c for c in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["", f"== {title}", _row(header, widths)]
    lines += [_row(row, widths) for row in rows]
    return lines


def render(r: dict) -> str:
    lines: list[str] = []
    lines += _table(
        "logins (challenge + verify, HTTPS keep-alive; ceiling: bare twisted.web)",
        [
            "clients",
            "logins/s",
            "ceil logins/s",
            "of ceil",
            "srv µs/login",
            "ceil µs/login",
            "µs of ceil",
            "loadgen µs/login",
        ],
        [
            [
                x["clients"],
                x["logins_per_s"],
                (x.get("ceiling") or {}).get("logins_per_s"),
                x.get("of_ceiling"),
                x["server_cpu_us_per_login"],
                (x.get("ceiling") or {}).get("server_cpu_us_per_login"),
                x.get("cpu_vs_ceiling"),
                x["loadgen_cpu_us_per_login"],
            ]
            for x in r.get("logins") or []
        ],
    )
    relay = r.get("relay") or {}
    rows = []
    for key in ("dk", "ceiling", "dk_half_rate", "ceiling_half_rate"):
        for x in relay.get(key, []):
            rows.append(
                [
                    {
                        "dk": "dkserver",
                        "ceiling": "ceiling",
                        "dk_half_rate": "dk @half",
                        "ceiling_half_rate": "ceil @half",
                    }[key],
                    x["pairs"],
                    f"{x['delivered']}/{x['expected']}",
                    x["msgs_per_s"],
                    x.get("fraction_of_ceiling"),
                    x["p50_ms"],
                    x["p99_ms"],
                    x.get("p99_of_ceiling"),
                    x["server_cpu_us_per_msg"],
                    x.get("db_cpu_us_per_msg"),
                    x["server_cpu_cores"],
                    x["loadgen_cpu_us_per_msg"],
                ]
            )
    lines += _table(
        "relay (signed direct messages; dkserver persists, ceiling does not)",
        [
            "server",
            "pairs",
            "delivered",
            "msgs/s",
            "of ceil",
            "p50 ms",
            "p99 ms",
            "p99 of ceil",
            "srv µs/msg",
            "db µs/msg",
            "srv cores",
            "lg µs/msg",
        ],
        rows,
    )
    lines += _table(
        "broadcast fan-out (time until every client holds it)",
        [
            "server",
            "clients",
            "p50 ms",
            "p99 ms",
            "all held ms",
            "max",
            "srv µs/delivery",
            "p50/ceil",
            "p99/ceil",
            "all held/ceil",
        ],
        [
            [
                x["target"],
                x["clients"],
                x["p50_ms_median"],
                x["p99_ms_median"],
                x["all_held_ms_median"],
                x["all_held_ms_max"],
                x["server_cpu_us_per_delivery_median"],
                x.get("p50_vs_ceiling", ""),
                x.get("p99_vs_ceiling", ""),
                x.get("all_held_vs_ceiling", ""),
            ]
            for dk in r.get("broadcast") or []
            for x in (dk, dk.get("ceiling"))
            if x
        ],
    )
    conns = r.get("connections") or {}
    lines += _table(
        "idle WSS connections (server RSS)",
        [
            "conns",
            "RSS KiB",
            "KiB/conn",
            "connects/s",
            "srv µs/connect",
            "srv idle CPU %",
            "lg KiB/conn",
            "lg µs/connect",
        ],
        [
            [
                s["conns"],
                s["server_rss_kib"],
                s["kib_per_conn"],
                s["connects_per_s"],
                s["server_cpu_us_per_connect"],
                s["server_idle_cpu_pct"],
                s["loadgen_kib_per_conn"],
                s["loadgen_cpu_us_per_connect"],
            ]
            for s in conns.get("steps", [])
        ],
    )
    for i, rnd in enumerate(conns.get("big_rounds", [])):
        lines.append(
            f"one {conns['big_message_bytes'] // 1024} KiB message through "
            f"{rnd['conns']} {'other ' if i else ''}connections: server RSS "
            f"+{rnd['kib_per_conn']} KiB/conn "
            f"(+{rnd['kib_per_conn_5s_later']} KiB/conn 5 s later)"
        )
    lines += _table(
        "backlog drain (pending messages sent on connect)",
        ["messages", "drain s", "msgs/s", "first msg s", "srv µs/msg", "db µs/msg"],
        [
            [
                x["messages"],
                x["drain_s"],
                x["msgs_per_s"],
                x["first_msg_s"],
                x["server_cpu_us_per_msg"],
                x.get("db_cpu_us_per_msg"),
            ]
            for x in r.get("backlog") or []
        ],
    )
    rows = []
    for x in r.get("reads") or []:
        for label, run in (("no readers", x["quiet"]), ("readers", x["busy"])):
            rows.append(
                [
                    label,
                    x["users"],
                    f"{run['delivered']}/{run['expected']}",
                    run["msgs_per_s"],
                    run["p50_ms"],
                    run["p99_ms"],
                    run["max_ms"],
                    run["server_cpu_cores"],
                ]
            )
    lines += _table(
        "relay while readers loop on the public reads",
        ["relay", "users", "delivered", "msgs/s", "p50", "p99", "max (ms)", "cores"],
        rows,
    )
    lines += _table(
        "the readers' requests (during the relay run with readers)",
        ["path", "requests", "per s", "status", "MiB", "p50 ms", "p99 ms"],
        [
            [
                path,
                p["requests"],
                p["per_s"],
                " ".join(f"{k}:{v}" for k, v in sorted(p["status"].items())),
                p["mib"],
                p["p50_ms"],
                p["p99_ms"],
            ]
            for x in r.get("reads") or []
            for path, p in x["reads"].items()
        ],
    )
    lines += _table(
        "each public read alone (sequential, one connection)",
        ["path", "requests", "status", "srv CPU ms/req", "wall ms/req"],
        [
            [
                path,
                p["requests"],
                " ".join(f"{k}:{v}" for k, v in sorted(p["status"].items())),
                p["server_cpu_ms_per_req"],
                p["wall_ms_per_req"],
            ]
            for x in r.get("reads") or []
            for path, p in x["probe"].items()
        ],
    )
    targets = r.get("targets") or {}
    lines += _table(
        "targets",
        ["target", "value", "wanted", "met"],
        [
            [k, v["value"], v["target"], "yes" if v["met"] else "NO"]
            for k, v in targets.items()
        ],
    )
    return "\n".join(lines)


# --- main --------------------------------------------------------------------


async def run(args) -> dict:
    nofile = raise_nofile()
    tiny = args.cmd == "smoke" or getattr(args, "smoke", False)
    cfg = copy.deepcopy(SMOKE if tiny else DEFAULTS)
    if args.cmd in ("all", "smoke"):
        wanted = ORDER
    elif args.cmd == "compare":
        wanted = COMPARED
    else:
        wanted = [args.cmd]
    _apply_overrides(cfg, args)
    tmp = tempfile.mkdtemp(prefix="dkbench-")
    # Taken now: the checkouts may change while the bench runs.
    versions = {root: dkserver_version(root) for root in [ROOT, *args.against]}
    args.versions = versions
    results: dict = {
        "meta": {
            "command": " ".join(["python -m bench", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "dkserver_commit": versions[ROOT],
            "nofile": nofile,
            "loadgen_procs": args.procs,
            "mask": wire.MASK_IMPL,
            "signing": "pre-signed pool (Ed25519 per message before the timed "
            "phase); latency from per-seq send times kept in the process that "
            "owns both ends of a pair",
            "content_bytes": 128,
            "backends": [be.label for be in args.backends],
            "against": {str(d): versions[d] for d in args.against},
            "repeat": args.repeat,
            "tmp": tmp,
        },
        "runs": [],
    }
    # (label, checkout, backend): this checkout's dkserver on every backend,
    # then each --against checkout's.
    variants = [(be.label, ROOT, be) for be in args.backends]
    for root in args.against:
        variants += [(f"{be.label}@{root.name}", root, be) for be in args.backends]
    # Each variant learns its own relay rate (the next run's message count).
    cfgs = {label: copy.deepcopy(cfg) for label, _, _ in variants}
    t_start = time.monotonic()
    ok = False
    started: list[Backend] = []
    try:
        for be in args.backends:
            log(f"database: {be.label}")
            be.start()
            started.append(be)
        # Rounds alternate the backend order, so a drift in the machine's load
        # over the run does not always favour the same one.
        for rnd in range(args.repeat):
            order = variants if rnd % 2 == 0 else variants[::-1]
            for i, (label, root, be) in enumerate(order):
                run_dir = os.path.join(tmp, f"{rnd + 1}-{i}-{be.kind}")
                os.makedirs(run_dir)
                results["runs"].append(
                    await run_server(
                        args, cfgs[label], wanted, (label, root, be), rnd, run_dir
                    )
                )
        ok = True
    finally:
        kill_all()
        for be in started:
            try:
                be.stop()
            except Exception:
                traceback.print_exc()
        if not ok:
            log(f"failed; server and load generator logs are in {tmp}")
    results["meta"]["seconds"] = round(time.monotonic() - t_start, 1)
    if len(results["runs"]) == 1:
        # One backend, one round: the scenarios at the top level, as before.
        results.update(results["runs"][0]["results"])
        results["setup"] = results["runs"][0]["setup"]
        results["meta"]["dkserver_pid"] = results["runs"][0]["dkserver_pid"]
        results["meta"]["dkserver_rss_kib_end"] = results["runs"][0]["rss_kib_end"]
        results["targets"] = results["runs"][0]["targets"]
    else:
        results["compare"] = compare.compare(results["runs"], results["meta"])
        results["targets"] = compare.targets(results["compare"])
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


async def run_server(
    args,
    cfg: dict,
    wanted: list[str],
    variant: tuple[str, Path, Backend],
    rnd: int,
    run_dir: str,
) -> dict:
    """One dkserver on a fresh database of its backend, every wanted scenario."""
    label, root, be = variant
    db, env = be.open(run_dir)
    dk = dkserver_proc(run_dir, db, env, root)
    b = Bench(
        tmp=run_dir,
        cafile=os.path.join(run_dir, "c.pem"),
        dk=dk,
        procs=args.procs,
        db_cpu=be.db_cpu,
        db=db,
    )
    out: dict = {}
    ok = False
    try:
        log(f"round {rnd + 1}, {label}: dkserver on 127.0.0.1:{dk.port}")
        await dk.start()
        for name in wanted:
            if name == "logins":
                out["logins"] = await run_logins(
                    b, cfg["logins"], with_ceiling=not args.no_ceiling
                )
            elif name == "relay":
                out["relay"] = await run_relay(
                    b, cfg["relay"], with_ceiling=not args.no_ceiling
                )
            elif name == "ceiling":
                out["relay"] = await run_ceiling_only(b, cfg["relay"])
            elif name == "broadcast":
                out["broadcast"] = await run_broadcast(
                    b, cfg["broadcast"], with_ceiling=not args.no_ceiling
                )
            elif name == "connections":
                out["connections"] = await run_connections(b, cfg["connections"])
            elif name == "backlog":
                out["backlog"] = await run_backlog(b, cfg["backlog"])
            elif name == "reads":
                out["reads"] = await run_reads(b, cfg["reads"])
            if not dk.alive():
                raise RuntimeError(f"dkserver died: {dk.tail()}")
        rss_end = dk.rss()
        ok = True
    finally:
        await dk.stop()
        if b.ceiling is not None:
            await b.ceiling.stop()
        try:
            be.close()
        except Exception:
            if ok:
                raise
            traceback.print_exc()
    return {
        "backend": label,
        "kind": be.kind,
        "dkserver_commit": args.versions[root],
        "round": rnd + 1,
        "dkserver_pid": dk.pid,
        "rss_kib_end": rss_end,
        "results": out,
        "setup": b.setup,
        "targets": evaluate(out),
    }


def _apply_overrides(cfg: dict, args) -> None:
    if getattr(args, "pairs", None):
        cfg["relay"]["pairs"] = args.pairs
    if getattr(args, "messages", None):
        if args.cmd == "backlog":
            cfg["backlog"]["messages"] = args.messages
        else:
            cfg["relay"]["messages"] = args.messages[0]
    if getattr(args, "backlog", None):
        cfg["backlog"]["messages"] = args.backlog
    if getattr(args, "clients", None):
        key = "broadcast" if args.cmd == "broadcast" else "logins"
        cfg[key]["clients"] = args.clients
    if getattr(args, "conns", None):
        cfg["connections"]["conns"] = args.conns
    if getattr(args, "big", None) is not None:
        cfg["connections"]["big"] = args.big
    if getattr(args, "batch", None):
        cfg["relay"]["batch"] = args.batch
    if getattr(args, "window", None):
        cfg["relay"]["window"] = args.window
    if getattr(args, "seconds", None):
        cfg["relay"]["seconds"] = args.seconds
    if getattr(args, "rounds", None):
        cfg["broadcast"]["rounds"] = args.rounds
    if getattr(args, "duration", None):
        cfg["logins"]["duration"] = args.duration
    if args.cmd == "reads":
        for key in ("users", "readers", "rate"):
            if getattr(args, key, None):
                cfg["reads"][key] = getattr(args, key)
        if args.pairs:
            cfg["reads"]["pairs"] = args.pairs[0]
        if args.seconds:
            cfg["reads"]["seconds"] = args.seconds


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    p.add_argument(
        "--db",
        action="append",
        metavar="DB",
        help="backend to run on, repeatable: sqlite (default), a file path or "
        "sqlite: URL, postgresql (a private server the bench starts), "
        "postgresql://… (a fresh schema per run there), or both "
        "(sqlite and postgresql); every server run gets a fresh database",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over the backends (their order alternates); medians",
    )
    p.add_argument(
        "--against",
        action="append",
        type=Path,
        default=[],
        metavar="CHECKOUT",
        help="also run the dkserver of this checkout (e.g. a git worktree of "
        "main) on every --db, in the same rounds: before/after in one run",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("all", help="every scenario, default sizes")
    sub.add_parser("smoke", help="every scenario, tiny sizes (seconds)")
    s = sub.add_parser("logins")
    s.add_argument("--clients", type=int, action="append")
    s.add_argument("--duration", type=float)
    s.add_argument("--no-ceiling", action="store_true")
    for name in ("relay", "ceiling"):
        s = sub.add_parser(name)
        s.add_argument("--pairs", type=int, action="append")
        s.add_argument(
            "--messages",
            type=int,
            action="append",
            help="total messages per closed-loop run",
        )
        s.add_argument("--no-ceiling", action="store_true")
        s.add_argument(
            "--batch",
            type=int,
            help="frames per write (default 1: one TLS record each)",
        )
    s = sub.add_parser("broadcast")
    s.add_argument("--clients", type=int, action="append")
    s.add_argument("--rounds", type=int)
    s.add_argument("--no-ceiling", action="store_true")
    s = sub.add_parser("connections")
    s.add_argument("--conns", type=int, action="append")
    s.add_argument("--big", type=int)
    s = sub.add_parser("backlog")
    s.add_argument("--messages", type=int, action="append")
    s = sub.add_parser(
        "reads",
        help="relay p99 without and with readers looping on the public reads",
    )
    s.add_argument("--users", type=int, help="registered users (default 100,000)")
    s.add_argument("--readers", type=int, help="reader clients, one IP each")
    s.add_argument("--pairs", type=int, action="append", help="relay pairs")
    s.add_argument("--rate", type=float, help="relay messages/s (paced)")
    s.add_argument("--seconds", type=float, help="relay run length")
    s.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    s = sub.add_parser(
        "compare",
        help="logins, relay and backlog on every --db, side by side",
    )
    s.add_argument("--clients", type=int, action="append", help="login clients")
    s.add_argument("--duration", type=float, help="seconds per login run")
    s.add_argument("--pairs", type=int, action="append", help="relay pairs")
    s.add_argument(
        "--messages", type=int, action="append", help="messages per relay run"
    )
    s.add_argument("--seconds", type=float, help="relay run length")
    s.add_argument("--backlog", type=int, action="append", help="backlog sizes")
    s.add_argument("--no-ceiling", action="store_true")
    s.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    args = p.parse_args(argv)
    args.no_ceiling = getattr(args, "no_ceiling", False)
    if args.repeat < 1 or args.procs < 1:
        p.error("--repeat and --procs take a positive integer")
    args.against = [d.resolve() for d in args.against]
    for d in args.against:
        if not (d / "dkserver" / "__init__.py").is_file():
            p.error(f"--against {d}: not a dkserver checkout")
    try:
        args.backends = parse_backends(args.db)
    except BackendError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.chdir(ROOT)
    try:
        results = asyncio.run(run(args))
    except KeyboardInterrupt:
        kill_all()
        print("interrupted", file=sys.stderr)
        return 130
    except BackendError as e:
        kill_all()
        print(f"python -m bench: {e}", file=sys.stderr)
        return 2
    except Exception:
        kill_all()
        traceback.print_exc()
        return 1
    if len(results["runs"]) == 1:
        print(render(results))
    else:
        for r in results["runs"]:
            print(f"\n=== {r['backend']}, round {r['round']}")
            print(render({**r["results"], "targets": r["targets"]}))
        print(compare.render(results["compare"], results["targets"]))
    print("BENCH_JSON " + orjson.dumps(results).decode(), flush=True)
    return 0
