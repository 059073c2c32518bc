"""Smoke run of ``python -m bench soak``: a few seconds of the mixed load at
tiny rates, on SQLite and on PostgreSQL.

The soak is a benchmark, not a test: this checks only the output's shape
(the CSV series, the JSON summary and its trend verdicts) and that the load
did what it says (messages to online and offline users all delivered once,
churners logged in again, broadcasts received); no timing is asserted.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak import FIELDS

ROOT = Path(__file__).resolve().parents[2]


def _soak(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", "soak", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.both_backends
def test_soak_writes_a_series_and_a_summary_with_trends(tmp_path, db_target):
    out = tmp_path / "series"
    proc = _soak(
        *("--minutes", "0.15", "--interval", "1.5", "--db", db_target),
        *("--users", "16", "--dm-rate", "40", "--bc-rate", "1", "--rest-rate", "5"),
        *("--online-s", "1,3", "--offline-s", "0.5,1.5", "--out", str(out)),
        *("--server-env", "DK_SHUTDOWN_GRACE=1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    result = json.loads(lines[0].removeprefix("BENCH_JSON "))
    assert result["meta"]["server_env"] == {"DK_SHUTDOWN_GRACE": "1"}

    series = result["series"]
    assert len(series) >= 5  # the row before the load and one per interval
    assert all(set(FIELDS) <= set(row) for row in series)
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == FIELDS and len(rows) == len(series)
    assert json.loads(out.with_suffix(".json").read_text())["summary"]
    for row in series[1:]:
        assert row["rss_kib"] > 0 and row["fds"] > 0
        assert row["pending_direct"] is not None
        assert row["ws_connections"] is not None

    s = result["summary"]
    totals = s["totals"]
    assert totals["dm_sent"] > 0 and totals["dm_to_offline"] > 0
    assert totals["dm_received"] == totals["dm_sent"]
    # At least once: a message whose delivery an abort left unconfirmed
    # comes again on the next connect (a duplicate), none is missing.
    assert s["undelivered"] == 0
    assert s["pending_direct"]["after_drain"] == 0
    assert totals["logins"] > 0 and totals["bc_received"] > 0
    assert totals["rest_reads"] > 0 and totals["rest_errors"] == 0
    assert s["dm_latency_ms"]["p99"] is not None
    for key in ("rss_kib", "fds", "fds_minus_conns"):
        assert s["trends"][key]["verdict"] in ("flat", "growing"), s["trends"][key]
    assert "trend over the second half" in proc.stdout


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--minutes", "1", "--server-env", "NOEQUALS"], "KEY=VALUE"),
        (["--minutes", "0"], "positive"),
        (["--minutes", "1", "--db", "both"], "one backend"),
        (["--minutes", "1", "--online-s", "5,1"], "MIN <= MAX"),
        (["--minutes", "1", "--offline-share", "0.9", "--churner-share", "0.5"], "1"),
    ],
)
def test_soak_refuses_bad_arguments(argv, says):
    proc = _soak(*argv, timeout=60)
    assert proc.returncode == 2
    assert says in proc.stderr and "Traceback" not in proc.stderr
