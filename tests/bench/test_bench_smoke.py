"""Smoke run of the benchmark runner: every scenario at tiny sizes.

Benchmarks are not tests; this only checks that ``python -m bench smoke``
starts dkserver, runs every scenario end to end and prints the JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    for kind in ("dk", "ceiling", "dk_half_rate"):
        run = result["relay"][kind][0]
        assert run["delivered"] == run["expected"] > 0, run
        assert run["p99_ms"] is not None
    assert all(r["received"] > 0 for r in result["broadcast"][0]["rounds"])
    assert result["connections"]["steps"][-1]["conns"] > 0
    assert result["connections"]["big_ok"]
    assert result["backlog"][0]["ok"]
    assert isinstance(result["targets"], dict)
