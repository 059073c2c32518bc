"""``python -m bench.frames`` runs both readers over the same frames and
prints a row per frame kind; bad arguments are a one-line error, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.frames", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_it_reads_every_frame_with_both_readers_and_prints_the_ratio():
    done = _run("--frames", "200", "--rounds", "1", "--size", "300")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split() == ["frame", "autobahn", "µs", "whole", "µs", "ratio"]
    assert rows[1].startswith("text frame, 300 B")
    assert rows[2].startswith("pong, 8 B")
    for row in rows[1:]:
        autobahn, whole, ratio = (float(x) for x in row.split()[-3:])
        assert autobahn > 0 and whole > 0
        assert abs(ratio - whole / autobahn) < 0.01


def test_bad_arguments_are_refused():
    done = _run("--size", "70000")
    assert done.returncode == 2
    assert "--size" in done.stderr.splitlines()[-1]
