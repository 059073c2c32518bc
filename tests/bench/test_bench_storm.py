"""Smoke run of ``python -m bench storm``: the tiny reconnect storm.

Benchmarks are not tests; this checks that the storm seeds pending messages,
restarts the server, reconnects every user, reports its figures, and that
nothing was lost (no pending row left, every backlog read).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_storm_smoke_reconnects_everyone_and_loses_nothing():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "storm", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    (run,) = result["runs"]
    users, pending = run["users"], run["pending_each"]
    assert users > 0 and pending > 0
    assert run["pending_rows_before"] == users * pending
    storm, ceiling = run["storm"], run["ceiling"]
    assert storm["connected"] == ceiling["connected"] == users
    assert storm["refused"] == ceiling["refused"] == 0
    assert storm["received"] == users * pending
    assert storm["complete_backlogs"] == users
    assert storm["pending_rows_after"] == run["pending_rows_after_close"] == 0
    assert storm["ok"] and ceiling["ok"]
    for key in ("all_connected_s", "all_drained_s", "all_delivered_s"):
        assert storm[key] > 0, key
    # CPU time is read in clock ticks: a tiny run may round to none.
    assert storm["server_cpu_us_per_connect"] >= 0
    assert ceiling["server_cpu_us_per_connect"] >= 0
    assert "cpu_per_connect_of_ceiling" in run
    # The login ceiling: the same client sequence (login, then connect).
    login_ceiling = run["login_ceiling"]
    assert login_ceiling["connected"] == users and login_ceiling["refused"] == 0
    assert login_ceiling["ok"] and login_ceiling["server_cpu_us_per_connect"] >= 0
    assert "cpu_per_connect_of_login_ceiling" in run
    assert "cpu_per_connect_of_login_ceiling" in result["summary"]["this"]
    assert storm["server_vm_hwm_kib"] >= storm["server_rss_peak_kib"] > 0
    assert result["summary"]["this"]["lost"] == 0
