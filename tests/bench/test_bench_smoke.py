"""Smoke run of the benchmark runner: every scenario at tiny sizes.

Benchmarks are not tests; this only checks that ``python -m bench smoke``
starts dkserver, runs every scenario end to end and prints the JSON line, and
that ``--db`` runs the compared scenarios on SQLite and on PostgreSQL (the
test run's server) side by side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from dkserver.store.url import parse_database_url

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_runs_every_scenario():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    for key in ("meta", "logins", "relay", "broadcast", "connections", "backlog"):
        assert key in result, key
    assert result["logins"][0]["logins"] > 0
    for kind in ("dk", "ceiling", "dk_half_rate", "ceiling_half_rate"):
        run = result["relay"][kind][0]
        assert run["delivered"] == run["expected"] > 0, run
        assert run["p99_ms"] is not None
    assert result["relay"]["dk_half_rate"][0]["p99_of_ceiling"] > 0
    assert all(r["received"] > 0 for r in result["broadcast"][0]["rounds"])
    assert result["connections"]["steps"][-1]["conns"] > 0
    assert result["connections"]["big_ok"]
    assert result["backlog"][0]["ok"]
    assert isinstance(result["targets"], dict)


def _bench(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bench_compare_runs_logins_relay_backlog_on_sqlite_and_postgresql(pg_url):
    proc = _bench("--db", "sqlite", "--db", pg_url, "compare", "--smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    assert "backends side by side" in proc.stdout
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    assert [r["kind"] for r in result["runs"]] == ["sqlite", "postgresql"]
    assert "***" in result["runs"][1]["backend"]  # the password is not shown
    for run in result["runs"]:
        out = run["results"]
        assert set(out) == {"logins", "relay", "backlog"}, run["backend"]
        assert out["logins"][0]["logins"] > 0
        relay = out["relay"]["dk"][0]
        assert relay["delivered"] == relay["expected"] > 0, run["backend"]
        assert out["backlog"][0]["ok"], run["backend"]
    ratio = result["compare"]["relay_postgresql_of_sqlite"]
    assert ratio["of_medians"] > 0 and len(ratio["per_round"]) == 1
    assert "relay_postgresql_of_sqlite" in result["targets"]
    # Each server run had a schema of its own, dropped afterwards.
    conn = psycopg.connect(parse_database_url(pg_url).conninfo)
    with conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dk_bench_%'"
        ).fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert (left, messages) == (0, 0)


def test_bench_refuses_a_db_it_cannot_use():
    proc = _bench("--db", "mysql://db/dk", "compare", "--smoke", timeout=60)
    assert proc.returncode == 2
    assert "--db" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_reads_runs_relay_beside_the_public_readers():
    proc = _bench("reads", "--smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")]
    (run,) = json.loads(lines[0].removeprefix("BENCH_JSON "))["reads"]
    for relay in (run["quiet"], run["busy"]):
        assert relay["delivered"] == relay["expected"] > 0, relay
    answered = sum(sum(p["status"].values()) for p in run["reads"].values())
    assert answered > 0, run["reads"]
    assert run["reads"]["/active-users"]["status"].get("200"), run["reads"]
    assert run["probe"]["/active-users"]["server_cpu_ms_per_req"] is not None
