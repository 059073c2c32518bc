"""``python -m bench cluster``: what running several nodes costs, in one run.

    .venv/bin/python -m bench cluster                     # ~5 min
    .venv/bin/python -m bench cluster --repeat 3          # medians of 3 rounds
    .venv/bin/python -m bench cluster --smoke             # tiny sizes (CI)
    .venv/bin/python -m bench cluster --baseline /tmp/dk-before

One private PostgreSQL (durable settings) and one private Redis; on them, in
the same run and alternating their order every round:

- ``single``: one node without ``--redis`` (the single process, LocalBus);
- ``cluster``: three nodes ``--redis … --node-id n0..n2``, one database;
- ``baseline`` (``--baseline CHECKOUT``): one node of another checkout
  (e.g. ``git archive`` of main before issue 11) without ``--redis``, so
  "a single node is no slower than before" is measured in the same run.

Each configuration gets its own fresh database.  Per round it runs:

- relay: ``pairs`` closed-loop sender->receiver pairs; both ends on one node
  (every configuration) and, in the cluster, sender on n0 and receiver on n1;
- broadcast: ``clients`` receivers dealt over the nodes (the sender on n0),
  ``rounds`` broadcasts; time until every receiver holds it;
- connects: ``conns`` registered users log in and open their WebSocket,
  spread over the nodes (one load generator per node).

Server CPU is summed over every node process of the configuration (idle
nodes included); Redis and PostgreSQL CPU (their processes, utime+stime)
are reported separately.  The target: cross-node relay costs at most
1.5x the server CPU per message of same-node relay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import scenarios, wire
from bench.procs import (
    ServerProc,
    cpu_seconds,
    free_port,
    kill_all,
    raise_nofile,
    start_all,
    stop_all,
    tree_cpu_seconds,
)
from bench.runner import ROOT, _table, dkserver_version, server_env
from bench.scenarios import Bench, log, split

SIZES = {
    "pairs": 20,
    "messages": 20000,
    "clients": 300,
    "rounds": 10,
    "conns": 600,
    "concurrency": 8,
}
SMOKE = {
    "pairs": 2,
    "messages": 100,
    "clients": 6,
    "rounds": 2,
    "conns": 6,
    "concurrency": 2,
}
NODES = 3
#: Cross-node relay may cost this many times the server CPU of same-node.
TARGET_CROSS_RATIO = 1.5
#: "No slower": the single node's server CPU per message within this factor
#: of the baseline's (the box is shared; rounds vary by more than this).
TARGET_SINGLE_RATIO = 1.05

#: A durable server, as in production (fsync on); room for the nodes' pools.
PG_SETTINGS = {
    "max_connections": "100",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
}


# --- PostgreSQL and Redis ----------------------------------------------------


class Infra:
    """The PostgreSQL and Redis every configuration shares: private servers
    started here (their CPU is measured), or the ones ``db_url`` and
    ``redis_url`` name (every configuration then shares that database, and
    their CPU is not measured)."""

    def __init__(self, db_url: str | None = None, redis_url: str | None = None):
        self.db_url, self._redis_url = db_url, redis_url
        self._pg = None
        self.pg = None
        self._postmaster: int | None = None
        self.redis = None

    def start(self) -> None:
        from tests.support import redis
        from tests.support.postgres import PrivateServer, find_bindir

        if self.db_url is None:
            bindir = find_bindir()
            if bindir is None:
                raise BenchError("no PostgreSQL binaries (initdb, pg_ctl); or --db")
            self._pg = PrivateServer(bindir, settings=PG_SETTINGS)
            self.pg = self._pg.start()
            pid_file = self._pg.data / "postmaster.pid"
            self._postmaster = int(pid_file.read_text().split()[0])
        if self._redis_url is None:
            if redis.find_redis_server() is None:
                raise BenchError("redis-server not found on PATH; or --redis")
            os.environ.pop(redis.ENV_URL, None)  # private: its CPU is ours
            self.redis = redis.open_server()

    def database(self) -> str:
        """A fresh migrated database's URL (or the one given)."""
        if self.pg is None:
            return self.db_url
        return self.pg.url(self.pg.create_database(migrated=True))

    @property
    def redis_url(self) -> str:
        return self._redis_url or self.redis.url

    def pg_cpu(self) -> float | None:
        """The postmaster and its children (the nodes' pool connections)."""
        if self._postmaster is None:
            return None
        return tree_cpu_seconds(self._postmaster)

    def redis_cpu(self) -> float | None:
        return cpu_seconds(self.redis._proc.pid) if self.redis is not None else None

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.close()
        if self._pg is not None:
            self._pg.stop()


class BenchError(Exception):
    """A setup problem: one line, exit code 2."""


# --- the nodes of one configuration ------------------------------------------


class Nodes:
    """The dkserver processes of one configuration, read as one server by
    the scenarios: ``port`` is the first node's, :meth:`cpu` the sum over all
    nodes.  Every :meth:`cpu` call also records the per-node, Redis and
    PostgreSQL readings (the scenarios read it twice around a timed phase),
    so :meth:`costs` splits the last phases by process."""

    def __init__(self, name: str, procs: list[ServerProc], infra: Infra) -> None:
        self.name, self.procs, self.infra = name, procs, infra
        self.marks: list[tuple[list[float], float | None, float | None]] = []

    @property
    def port(self) -> int:
        return self.procs[0].port

    @property
    def ports(self) -> list[int]:
        return [p.port for p in self.procs]

    def cpu(self) -> float:
        nodes = [p.cpu() for p in self.procs]
        self.marks.append((nodes, self.infra.redis_cpu(), self.infra.pg_cpu()))
        return sum(nodes)

    def costs(self, since: int) -> dict:
        """CPU seconds of the timed phases recorded after mark ``since``
        (pairs of readings): per node, Redis, PostgreSQL."""
        marks = self.marks[since:]
        nodes = [0.0] * len(self.procs)
        redis = pg = 0.0
        for a, b in zip(marks[0::2], marks[1::2], strict=True):
            nodes = [n + y - x for n, x, y in zip(nodes, a[0], b[0], strict=True)]
            redis = None if a[1] is None else redis + b[1] - a[1]
            pg = None if a[2] is None else pg + b[2] - a[2]
        return {"nodes": nodes, "redis": redis, "pg": pg}

    def rss(self) -> int:
        return sum(p.rss() for p in self.procs)

    async def start(self) -> None:
        # The first node writes the JWT secret (and the certificate); the
        # others start together once it listens.
        await self.procs[0].start()
        await asyncio.gather(*(p.start() for p in self.procs[1:]))

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.procs))

    def check(self) -> None:
        for p in self.procs:
            if not p.alive():
                raise RuntimeError(f"{self.name}: {p.name} died: {p.tail()}")


def node_proc(
    tmp: str, name: str, db: str, extra: list[str], root: Path = ROOT
) -> ServerProc:
    port = free_port()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    argv = [twistd, "-n", "--pidfile=", "dkserver", "--https", f"127.0.0.1:{port}"]
    argv += ["--http", "none", "--db", db, *extra]
    argv += ["--cert", os.path.join(tmp, "c.pem"), "--key", os.path.join(tmp, "k.pem")]
    env = server_env()
    env["DK_JWT_SECRET_FILE"] = os.path.join(tmp, f"{name.split('-')[0]}-jwt-secret")
    env["PYTHONPATH"] = str(root) + os.pathsep + env["PYTHONPATH"]
    return ServerProc(name, argv, env, port, os.path.join(tmp, f"{name}.log"))


def configuration(name: str, tmp: str, infra: Infra, baseline: Path | None) -> Nodes:
    """The nodes of ``name`` on a fresh database (new users would otherwise
    get the earlier rounds' broadcasts as backlog)."""
    db = infra.database()
    if name == "cluster":
        procs = [
            node_proc(
                tmp,
                f"cluster-n{i}",
                db,
                ["--redis", infra.redis_url, "--node-id", f"n{i}"],
            )
            for i in range(NODES)
        ]
    else:
        root = baseline if name == "baseline" else ROOT
        procs = [node_proc(tmp, name, db, [], root=root)]
    return Nodes(name, procs, infra)


# --- scenarios ---------------------------------------------------------------


@dataclass
class ClusterBench(Bench):
    """A :class:`Bench` whose load generator jobs go to chosen nodes:
    ``routes[kind]`` lists the ports, dealt in turn to that kind's jobs;
    for ``relay`` it is ``[sender port, receiver port]``."""

    routes: dict = field(default_factory=dict)
    #: Before every user name: configurations may share one database.
    prefix: str = ""
    _turn: int = 0

    def tag(self, kind: str) -> str:
        return self.prefix + super().tag(kind)

    def route(self, **routes: list[int]) -> None:
        self.routes, self._turn = routes, 0

    def job(self, kind: str, server, **fields) -> dict:
        out = super().job(kind, server, **fields)
        ports = self.routes.get(kind)
        if kind == "relay" and ports:
            out["port"], out["receiver_port"] = ports
        elif ports:
            out["port"] = ports[self._turn % len(ports)]
            self._turn += 1
        return out


def _per(seconds: float | None, n: int) -> float | None:
    return round(seconds * 1e6 / n, 1) if n and seconds is not None else None


def _split_costs(costs: dict, n: int, unit: str) -> dict:
    """The phase's CPU per unit of work: all nodes, each node, Redis, PG."""
    return {
        f"server_cpu_us_per_{unit}": _per(sum(costs["nodes"]), n),
        f"node_cpu_us_per_{unit}": [_per(c, n) for c in costs["nodes"]],
        f"redis_cpu_us_per_{unit}": _per(costs["redis"], n),
        f"pg_cpu_us_per_{unit}": _per(costs["pg"], n),
    }


async def relay(b: ClusterBench, nodes: Nodes, cfg: dict, to: int) -> dict:
    """Relay from node 0 to node ``to``."""
    b.route(relay=[nodes.ports[0], nodes.ports[to]], users=nodes.ports)
    since = len(nodes.marks)
    count = max(10, cfg["messages"] // cfg["pairs"])
    run = await scenarios.relay(b, "dk", cfg["pairs"], count, max_s=180.0)
    run["placement"] = "same node" if to == 0 else "two nodes"
    run.update(_split_costs(nodes.costs(since), run["delivered"], "msg"))
    return run


async def broadcast(b: ClusterBench, nodes: Nodes, cfg: dict) -> dict:
    # One load generator per node (the single node gets as many), the
    # sender's first: receivers on every node.
    b.procs = NODES
    b.route(bcast=nodes.ports, users=nodes.ports)
    since = len(nodes.marks)
    run = await scenarios.broadcast(b, cfg["clients"], cfg["rounds"])
    held = sorted(r["all_held_ms"] for r in run["rounds"])
    run["all_held_ms_p50"] = scenarios.pct(held, 0.5)
    run["all_held_ms_p99"] = scenarios.pct(held, 0.99)
    run["recipient_p50_ms"] = statistics.median(r["p50_ms"] for r in run["rounds"])
    deliveries = sum(r["received"] for r in run["rounds"])
    run.update(_split_costs(nodes.costs(since), deliveries, "delivery"))
    return run


async def connects(b: ClusterBench, nodes: Nodes, cfg: dict) -> dict:
    """Login + WebSocket connect of ``conns`` users, one load generator per
    node (as many on the single node); the sockets then close."""
    n = cfg["conns"]
    b.route(users=nodes.ports, connects=nodes.ports)
    users = [u for u, _ in await b.users(b.tag("j"), n)]
    jobs = [
        b.job("connects", nodes, users=chunk, concurrency=cfg["concurrency"])
        for chunk in split(users, NODES)
    ]
    gens = await start_all(jobs, b.tmp, f"connects-{nodes.name}")
    try:
        await asyncio.gather(*(g.expect("ready", timeout=60) for g in gens))
        since = len(nodes.marks)
        nodes.cpu()
        for g in gens:
            g.command("go")
        results = await asyncio.gather(
            *(g.expect("result", timeout=120 + n / 10) for g in gens)
        )
        await asyncio.sleep(0.3)
        nodes.cpu()
        for g in gens:
            g.command("close")
        await asyncio.gather(*(g.expect("closed", timeout=30) for g in gens))
    finally:
        await stop_all(gens)
    failed = sum(r["failed"] for r in results)
    if failed:
        fails = [f for r in results for f in r["failures"]]
        raise RuntimeError(f"{nodes.name}: {failed} connects failed: {fails[:3]}")
    span = (
        max(r["end_ns"] for r in results) - min(r["start_ns"] for r in results)
    ) / 1e9
    done = sum(r["connected"] for r in results)
    out = {
        "conns": done,
        "seconds": round(span, 3),
        "connects_per_s": round(done / span, 1) if span else None,
        "loadgen_cpu_us_per_connect": _per(sum(r["cpu_s"] for r in results), done),
    }
    out.update(_split_costs(nodes.costs(since), done, "connect"))
    return out


async def one_round(b: ClusterBench, nodes: Nodes, cfg: dict) -> dict:
    out: dict = {"config": nodes.name, "nodes": len(nodes.procs)}
    log(f"{nodes.name}: relay, both ends on one node")
    out["relay_same"] = await relay(b, nodes, cfg, 0)
    if len(nodes.procs) > 1:
        log(f"{nodes.name}: relay, sender on n0, receiver on n1")
        out["relay_cross"] = await relay(b, nodes, cfg, 1)
    if cfg.get("relay_only"):
        return out
    log(f"{nodes.name}: {cfg['conns']} logins + connects")
    out["connects"] = await connects(b, nodes, cfg)
    await asyncio.sleep(1.0)  # the disconnects settle
    # Last: every user registered after a broadcast gets it as backlog.
    log(f"{nodes.name}: broadcast to {cfg['clients']} clients")
    out["broadcast"] = await broadcast(b, nodes, cfg)
    nodes.check()
    return out


def _brief(out: dict) -> str:
    """One log line per configuration and round (the table comes at the end)."""
    parts = []
    for key in ("relay_same", "relay_cross"):
        if key in out:
            r = out[key]
            parts.append(
                f"{key} {r['delivered']}/{r['expected']} {r['msgs_per_s']}/s "
                f"{r['server_cpu_us_per_msg']} µs/msg"
            )
    if "connects" in out:
        parts.append(f"connects {out['connects']['connects_per_s']}/s")
        held = out["broadcast"]["all_held_ms_p50"]
        parts.append(f"broadcast all held p50 {held} ms")
    return "; ".join(parts)


# --- summary -----------------------------------------------------------------

#: (row label, config, scenario key, figures)
ROWS = [
    ("single, same node", "single", "relay_same"),
    ("baseline, same node", "baseline", "relay_same"),
    ("cluster, same node", "cluster", "relay_same"),
    ("cluster, two nodes", "cluster", "relay_cross"),
]
RELAY_FIGURES = [
    "msgs_per_s",
    "p50_ms",
    "p99_ms",
    "server_cpu_us_per_msg",
    "redis_cpu_us_per_msg",
    "pg_cpu_us_per_msg",
]
BCAST_FIGURES = [
    "all_held_ms_p50",
    "all_held_ms_p99",
    "recipient_p50_ms",
    "server_cpu_us_per_delivery",
    "redis_cpu_us_per_delivery",
    "pg_cpu_us_per_delivery",
]
CONNECT_FIGURES = [
    "connects_per_s",
    "server_cpu_us_per_connect",
    "redis_cpu_us_per_connect",
    "pg_cpu_us_per_connect",
]


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def summarize(rounds: list[dict]) -> dict:
    """Medians over the rounds of every figure, per configuration/scenario."""
    out: dict = {}
    for config in ("single", "baseline", "cluster"):
        runs = [r for r in rounds if r["config"] == config]
        if not runs:
            continue
        keys = [("relay_same", RELAY_FIGURES), ("broadcast", BCAST_FIGURES)]
        keys += [("relay_cross", RELAY_FIGURES), ("connects", CONNECT_FIGURES)]
        out[config] = {
            key: {f: _median([r[key][f] for r in runs]) for f in figures}
            for key, figures in keys
            if key in runs[0]
        }
    return out


def targets(rounds: list[dict], summary: dict) -> dict:
    out = {}
    cl = [r for r in rounds if r["config"] == "cluster"]
    ratios = [
        r["relay_cross"]["server_cpu_us_per_msg"]
        / r["relay_same"]["server_cpu_us_per_msg"]
        for r in cl
        if r["relay_same"]["server_cpu_us_per_msg"]
    ]
    if ratios:
        v = round(statistics.median(ratios), 3)
        out["cross_over_same_node_server_cpu"] = {
            "value": v,
            "per_round": [round(x, 3) for x in ratios],
            "target": f"<= {TARGET_CROSS_RATIO}",
            "met": v <= TARGET_CROSS_RATIO,
        }
    single = summary.get("single", {}).get("relay_same", {})
    for other in ("baseline", "cluster"):
        theirs = summary.get(other, {}).get("relay_same", {})
        mine, ref = (
            single.get("server_cpu_us_per_msg"),
            theirs.get("server_cpu_us_per_msg"),
        )
        if mine and ref:
            v = round(mine / ref, 3)
            key = (
                "single_over_baseline_server_cpu"
                if other == "baseline"
                else "single_over_cluster_same_node_server_cpu"
            )
            out[key] = {
                "value": v,
                "target": f"<= {TARGET_SINGLE_RATIO}" if other == "baseline" else "-",
                "met": v <= TARGET_SINGLE_RATIO if other == "baseline" else None,
            }
    return out


MET = {True: "yes", False: "NO", None: "-"}


def render(results: dict) -> str:
    s = results["summary"]
    lines = [f"\n(medians of {results['meta']['repeat']} round(s))"]
    lines += _table(
        f"relay ({results['meta']['sizes']['pairs']} pairs, closed loop)",
        ["placement", "msgs/s", "p50 ms", "p99 ms", "srv µs/msg", "redis", "pg"],
        [
            [label, *(s[c][k][f] for f in RELAY_FIGURES)]
            for label, c, k in ROWS
            if k in s.get(c, {})
        ],
    )
    lines += _table(
        f"broadcast ({results['meta']['sizes']['clients']} receivers; "
        "ms until every receiver holds it, over the rounds)",
        ["config", "all p50", "all p99", "rcpt p50", "srv µs/dlv", "redis", "pg"],
        [
            [c, *(s[c]["broadcast"][f] for f in BCAST_FIGURES)]
            for c in s
            if "broadcast" in s[c]
        ],
    )
    lines += _table(
        "login + WebSocket connect (spread over the nodes)",
        ["config", "connects/s", "srv µs/conn", "redis", "pg"],
        [
            [c, *(s[c]["connects"][f] for f in CONNECT_FIGURES)]
            for c in s
            if "connects" in s[c]
        ],
    )
    lines += _table(
        "targets",
        ["target", "value", "wanted", "met"],
        [
            [k, v["value"], v["target"], MET[v["met"]]]
            for k, v in results["targets"].items()
        ],
    )
    return "\n".join(lines)


# --- main --------------------------------------------------------------------


async def run(args) -> dict:
    nofile = raise_nofile()
    cfg = dict(SMOKE if args.smoke else SIZES)
    for key in SIZES:
        if getattr(args, key, None):
            cfg[key] = getattr(args, key)
    tmp = tempfile.mkdtemp(prefix="dkbench-cluster-")
    results: dict = {
        "meta": {
            "command": " ".join(["python -m bench", *sys.argv[1:]]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "dkserver_commit": dkserver_version(),
            "baseline": str(args.baseline) if args.baseline else None,
            "nofile": nofile,
            "nodes": NODES,
            "repeat": args.repeat,
            "sizes": cfg,
            "postgresql": PG_SETTINGS,
            "mask": wire.MASK_IMPL,
            "tmp": tmp,
        },
        "rounds": [],
    }
    infra = Infra(args.db, args.redis)
    names = args.configs or ["single", "cluster"]
    if args.baseline and "baseline" not in names:
        names.append("baseline")
    cfg["relay_only"] = args.relay_only
    nodes: Nodes | None = None
    t_start = time.monotonic()
    ok = False
    try:
        log(f"starting PostgreSQL and Redis (tmp {tmp})")
        infra.start()
        setup: list = []
        for rnd in range(args.repeat):
            # Alternate the order, so a drift in the box's load does not
            # always favour the same configuration.
            for name in names if rnd % 2 == 0 else names[::-1]:
                nodes = configuration(name, tmp, infra, args.baseline)
                log(f"round {rnd + 1}: starting {name} ({len(nodes.procs)} node(s))")
                await nodes.start()
                b = ClusterBench(
                    tmp=tmp,
                    cafile=os.path.join(tmp, "c.pem"),
                    dk=nodes,
                    procs=args.procs,
                    prefix=f"{name[0]}{rnd + 1}",
                )
                out = await one_round(b, nodes, cfg)
                out["round"] = rnd + 1
                results["rounds"].append(out)
                setup += b.setup
                log(f"round {rnd + 1}, {name}: {_brief(out)}")
                await nodes.stop()
                nodes = None
        results["setup"] = setup
        ok = True
    finally:
        if nodes is not None:
            await nodes.stop()
        kill_all()
        infra.stop()
        if not ok:
            log(f"failed; node and load generator logs are in {tmp}")
    results["meta"]["seconds"] = round(time.monotonic() - t_start, 1)
    results["summary"] = summarize(results["rounds"])
    results["targets"] = targets(results["rounds"], results["summary"])
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench cluster",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--pairs", type=int, help=f"relay pairs ({SIZES['pairs']})")
    p.add_argument(
        "--messages", type=int, help=f"messages per relay run ({SIZES['messages']})"
    )
    p.add_argument(
        "--clients", type=int, help=f"broadcast receivers ({SIZES['clients']})"
    )
    p.add_argument("--rounds", type=int, help=f"broadcasts ({SIZES['rounds']})")
    p.add_argument("--conns", type=int, help=f"logins + connects ({SIZES['conns']})")
    p.add_argument(
        "--concurrency",
        type=int,
        help=f"connects in flight per node ({SIZES['concurrency']})",
    )
    p.add_argument("--repeat", type=int, default=1, help="rounds (medians)")
    p.add_argument("--procs", type=int, default=2, help="relay load generators")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    p.add_argument(
        "--configs",
        type=lambda text: text.split(","),
        help="which of single,cluster,baseline to run (default: all given)",
    )
    p.add_argument(
        "--relay-only", action="store_true", help="no connects, no broadcast"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    p.add_argument(
        "--db",
        metavar="postgresql://…",
        help="use this database (shared by every configuration) instead of "
        "a private PostgreSQL",
    )
    p.add_argument(
        "--redis", metavar="redis://…", help="use this Redis instead of a private one"
    )
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also run one node of this checkout without --redis",
    )
    args = p.parse_args(argv)
    for key in (*SIZES, "repeat", "procs"):
        value = getattr(args, key)
        if value is not None and value < 1:
            p.error(f"--{key} takes a positive integer")
    unknown = set(args.configs or ()) - {"single", "cluster", "baseline"}
    if unknown:
        p.error(f"--configs: unknown {', '.join(sorted(unknown))}")
    if "baseline" in (args.configs or ()) and args.baseline is None:
        p.error("--configs baseline needs --baseline CHECKOUT")
    if args.db is not None:
        from dkserver.store.url import DatabaseUrlError, parse_database_url

        try:
            if not parse_database_url(args.db).is_postgresql:
                p.error("--db: the cluster needs a postgresql:// URL")
        except DatabaseUrlError as e:
            p.error(f"--db: {e}")
    if args.redis is not None:
        from dkserver.cluster.url import RedisUrlError, parse_redis_url

        try:
            parse_redis_url(args.redis)
        except RedisUrlError as e:
            p.error(f"--redis: {e}")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "dkserver" / "__init__.py").is_file():
            p.error(f"--baseline {args.baseline}: not a dkserver checkout")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[2:] if argv is None else argv  # after "cluster"
    args = parse_args(argv)
    os.chdir(ROOT)
    try:
        results = asyncio.run(run(args))
    except BenchError as e:
        kill_all()
        print(f"python -m bench cluster: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kill_all()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        kill_all()
        traceback.print_exc()
        return 1
    print(render(results))
    print("BENCH_JSON " + orjson.dumps(results).decode(), flush=True)
    return 0
