"""Smoke run of ``python -m bench cluster``: tiny sizes on the test run's
PostgreSQL and a private Redis.

A benchmark is not a test: this checks only that the scenario starts a
single node and a three-node cluster, runs every part end to end (every
relayed message delivered, every broadcast received, every connect made)
and reports the fields docs/scaling.md quotes; no timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_cluster_smoke_reports_every_figure(pg_url, redis_url):
    argv = ["-m", "bench", "cluster", "--smoke", "--db", pg_url, "--redis", redis_url]
    proc = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))

    by_config = {r["config"]: r for r in result["rounds"]}
    assert set(by_config) == {"single", "cluster"}
    assert by_config["single"]["nodes"] == 1 and by_config["cluster"]["nodes"] == 3
    assert "relay_cross" not in by_config["single"]
    for config, run in by_config.items():
        relays = [run["relay_same"]] + (
            [run["relay_cross"]] if config == "cluster" else []
        )
        for relay in relays:
            assert relay["delivered"] == relay["expected"] > 0, relay
            assert relay["stray_frames"] == 0, relay
            assert relay["server_cpu_us_per_msg"] is not None
            assert len(relay["node_cpu_us_per_msg"]) == run["nodes"]
        for r in run["broadcast"]["rounds"]:
            assert r["received"] == run["broadcast"]["clients"], r
        assert run["connects"]["conns"] == result["meta"]["sizes"]["conns"]
    assert by_config["cluster"]["relay_cross"]["placement"] == "two nodes"

    summary = result["summary"]
    for figure in ("msgs_per_s", "server_cpu_us_per_msg", "p99_ms"):
        assert summary["cluster"]["relay_cross"][figure] is not None, figure
    assert summary["cluster"]["broadcast"]["all_held_ms_p99"] is not None
    assert summary["cluster"]["connects"]["connects_per_s"] is not None
    # Servers the bench did not start: their CPU is not someone else's to read.
    assert summary["cluster"]["relay_cross"]["redis_cpu_us_per_msg"] is None
    assert summary["cluster"]["relay_cross"]["pg_cpu_us_per_msg"] is None
    target = result["targets"]["cross_over_same_node_server_cpu"]
    assert target["target"] == "<= 1.5" and isinstance(target["met"], bool)
    assert "cross_over_same_node_server_cpu" in proc.stdout  # the table


def test_bench_cluster_refuses_a_sqlite_database():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "cluster", "--db", "dk.db"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "needs a postgresql:// URL" in proc.stderr
    assert "Traceback" not in proc.stderr
